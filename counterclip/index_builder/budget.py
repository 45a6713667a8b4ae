"""FAISS indexes within a memory budget (autofaiss-style): choose, train on a sample, fill, tune, open.

`plan_index` picks the most exact kind whose index fits the budget, for ``n`` vectors of width ``d``:

- ``Flat`` (exact) while ``n * 4d`` fits (and ``n <= exact_max``);
- ``HNSW{M},Flat`` while its graph and vectors fit (and ``n <= hnsw_max``);
- ``IVF{nlist},PQ{m}x4fs`` with a re-ranking stage: 4-bit product-quantised codes (``m = d / 4``: 4
  dimensions per sub-quantizer) scanned with SIMD lookups (FAISS "fast scan"), then the best candidates
  re-ranked: with the exact vectors (``RFlat``, memory-mapped) when they fit the budget too, else with
  8-bit codes (``Refine(SQ8)``), else with the exact vectors read from disk beyond the budget (coarser
  codes if even the 4-bit ones do not fit). At 1M CLIP-like vectors of width 512 this searched 4-6x
  faster than IVF-SQ8 (one byte per dimension, scanned in full) at the same recall: SQ8's scan is what
  made search cost grow with the collection (``scripts/bench_scale.py``). The re-ranking rows are counted
  in RAM: a server's searches keep touching them, so their pages stay resident;
- above that, ``IVF{nlist},SQ8`` built as IVF shards merged into on-disk inverted lists
  (`faiss.contrib.ondisk.merge_ondisk`), opened read-only: RAM holds the coarse quantizer only.

Every kind but the last is memory-mapped when opened (``IO_FLAG_MMAP_IFC``, faiss >= 1.11): a search
reads the pages it touches. Without a budget the kind follows the size alone
(`faiss_index.choose_factory`) and the file is read into RAM, as before.

`tune` raises ``nprobe`` / ``efSearch`` / the re-ranking depth until recall@k against exact search
reaches the target for every query kind, measured separately: ``stored`` (vectors of the collection,
in distribution), the other modality (``text_to_image`` for the images: caption vectors; text queries
are out of distribution for an image index) and ``path`` (points of the engine's ascent path: geodesic
steps of `PATH_STEP` radians from an item toward an item of the other modality, as
``engine/path.py`` walks). All three are recorded in the manifest (`FaissInfo.recall_by_query`). Each
setting is first tried on `PROBE_QUERIES` queries per kind, and on all of them only when those cannot
decide within their standard error.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from counterclip._fileio import TMP_SUFFIX, fsync_dir
from counterclip.errors import InputError
from counterclip.index_builder.checksums import Checksum
from counterclip.index_builder.config import IndexCfg
from counterclip.index_builder.faiss_index import (
    METRIC,
    Blocks,
    FaissInfo,
    _kind_of,
    _sample_rows,
    build_and_measure,
    choose_factory,
    exact_knn,
    make_search_params,
    new_index,
    read_index,
    search,
    write_index_atomic,
)

LOG = logging.getLogger(__name__)
PATH_STEP = 0.06  # radians per step of the engine's path (engine/path.py PathSettings.step_angle)
PATH_MAX_STEPS = 32  # steps + extra steps of the engine's path
CROSS_NAMES = {"images": "text_to_image", "captions": "image_to_text"}  # queries from the other modality
HAS_MMAP = hasattr(faiss, "IO_FLAG_MMAP_IFC")  # faiss >= 1.11 maps Flat, SQ, PQ, HNSW codes
_EF_LADDER = (16, 32, 64, 128, 256, 512, 1024, 2048)
_K_FACTORS = (2, 4, 8, 16, 32, 64)  # re-ranking depths (k_factor), shallowest first
DEPTH_LOSS = 0.005  # recall a shallower re-ranking depth may lose on the probe (`tune`)
TRAIN_PER_LIST = 64  # k-means points per list: FAISS warns below 39; more costs linearly, buys little
PROBE_QUERIES = 100  # queries per kind a setting is first measured on (`tune`)
PROBE_Z = 2.0  # standard errors by which the probe's recall must clear or miss the target to decide
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)


def parse_size(text: str | int | None) -> int | None:
    """``"2GB"`` -> 2_000_000_000; also ``1.5G``, ``800MB``, ``512MiB``, a plain number of bytes; None
    stays None.

    Raises:
        InputError: anything else.
    """
    if text is None or isinstance(text, int):
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise InputError(f"invalid memory size {text!r}; use a number with a unit, like 2GB, 800MB or 1.5G")
    value, unit = float(match.group(1)), (match.group(2) or "").lower()
    base = 1024 if "i" in unit else 1000
    power = {"": 0, "b": 0, "k": 1, "m": 2, "g": 3, "t": 4}[unit[:1] if unit[:1] in "kmgt" else ""]
    size = int(value * base**power)
    if size < 1:
        raise InputError(f"invalid memory size {text!r}: it must be positive")
    return size


def format_size(n: int) -> str:
    """Bytes for people: ``1.50 GB``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


# --- choosing -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """The index chosen for a collection under a budget."""

    kind: str  # flat | hnsw | ivf
    factory: str  # FAISS factory string of the index (as `FaissInfo.factory`)
    wrapper: str  # the id map around it: IDMap2 | IDMap | "" (IVF lists carry the ids themselves)
    io: str  # ram | mmap | ondisk: how it is opened
    ram_bytes: int  # estimated RAM of the index when every page is touched (the quantizer only when ondisk)
    disk_bytes: int  # estimated size of its files
    budget: int | None  # the budget of this collection, bytes
    reason: str  # one line: why this kind

    @property
    def built(self) -> str:
        """The factory string given to FAISS."""
        return f"{self.wrapper},{self.factory}" if self.wrapper else self.factory

    def to_dict(self) -> dict[str, Any]:
        return {
            "factory": self.built,
            "ram_bytes": self.ram_bytes,
            "disk_bytes": self.disk_bytes,
            "budget_bytes": self.budget,
            "reason": self.reason,
        }


def nlist_for(n: int, per_root: float = 2.0) -> int:
    """Inverted lists for ``n`` vectors: a power of two near ``per_root * sqrt(n)``, at least 16, and at
    most ``n / 39`` (FAISS wants ~39 training points per centroid)."""
    nlist = 2 ** round(math.log2(max(16.0, per_root * math.sqrt(max(n, 1)))))
    while nlist > 16 and nlist * 39 > n:
        nlist //= 2
    return nlist


def nlist_fast_scan(n: int) -> int:
    """Inverted lists of a fast-scan index: near ``sqrt(n)``, half as many as `nlist_for`. Scanning 4-bit
    codes is cheap, while training and assigning cost grow with the lists (1M vectors of width 512 here:
    1024 lists train and fill in about 25 s, 2048 in about 60 s)."""
    return nlist_for(n, per_root=1.0)


def _fast_scan_m(d: int) -> list[int]:
    """Sub-quantizer counts of a 4-bit fast-scan PQ for width ``d``, most precise first: 4, 8 then 16
    dimensions each (even counts that divide ``d``; the SIMD kernels pair sub-quantizers)."""
    return [d // w for w in (4, 8, 16) if d % w == 0 and d // w >= 2 and (d // w) % 2 == 0]


def plan_index(n: int, d: int, budget: int | None, cfg: IndexCfg, override: str = "auto") -> Plan:
    """The most exact FAISS index for ``n`` vectors of width ``d`` whose RAM fits ``budget`` bytes.

    Args:
        n: vectors in the collection.
        d: their width.
        budget: bytes this collection's index may hold in RAM; None: the size decides (as without a budget).
        cfg: `IndexCfg` (``exact_max``, ``hnsw_max``, ``hnsw_m``).
        override: ``auto`` or a FAISS factory string used as given (its estimate is still recorded).

    Returns:
        Plan.
    """
    mmap = "mmap" if HAS_MMAP and budget is not None else "ram"
    ids = 8 * n  # the id of every vector (IVF lists, or the IDMap)
    if override and override != "auto":
        kind, factory = choose_factory(n, d, cfg, override)
        return Plan(kind, factory, "IDMap2", mmap, n * 4 * d + ids, n * 4 * d + ids, budget, "asked for")
    if budget is None:
        kind, factory = choose_factory(n, d, cfg)
        size = n * 4 * d + 2 * ids if kind != "ivf" else n * d + ids
        return Plan(kind, factory, "IDMap2", "ram", size, size, None, "by size (no memory budget)")
    flat = n * 4 * d + ids
    if n <= cfg.exact_max and flat <= budget:
        return Plan("flat", "Flat", "IDMap", mmap, flat, flat, budget, "exact search fits the budget")
    hnsw = n * (4 * d + 8 * cfg.hnsw_m + 16) + ids
    if n <= cfg.hnsw_max and hnsw <= budget:
        return Plan("hnsw", f"HNSW{cfg.hnsw_m},Flat", "IDMap", mmap, hnsw, hnsw, budget, "HNSW graph fits")
    nlist_fs = nlist_fast_scan(n)

    def codes(m: int) -> int:
        """RAM of the fast-scan part: codes (m/2 bytes), the ids in the lists and in the id map (re-ranking
        works on positions), the quantizer."""
        return n * m // 2 + ids + n * 8 + nlist_fs * 4 * d

    # then the re-ranking stage, whose rows a server ends up holding (memory-mapped pages stay resident
    # while searches keep touching them): counted in RAM when they should fit
    m = _fast_scan_m(d)[0]
    for refine, per_row, why in (
        ("RFlat", 4 * d, "exact re-ranking from the vectors, memory-mapped, fits"),
        ("Refine(SQ8)", d, "re-ranking with 8-bit codes fits"),
    ):
        ram = codes(m) + n * per_row
        if ram <= budget:
            reason = f"4-bit PQ{m} codes (fast scan); {why}"
            return Plan("ivf", f"IVF{nlist_fs},PQ{m}x4fs,{refine}", "IDMap", mmap, ram, ram, budget, reason)
    for m in _fast_scan_m(d):
        if codes(m) <= budget:
            return Plan(
                "ivf",
                f"IVF{nlist_fs},PQ{m}x4fs,RFlat",
                "IDMap",
                mmap,
                codes(m),
                codes(m) + n * 4 * d,
                budget,
                f"4-bit PQ{m} codes (fast scan) fit; exact re-ranking from vectors on disk, beyond the budget",
            )
    nlist = nlist_for(n)
    quantizer = nlist * 4 * d
    sq8 = n * d + ids + quantizer
    return Plan(
        "ivf",
        f"IVF{nlist},SQ8",
        "",
        "ondisk",
        quantizer,
        sq8,
        budget,
        "no compressed index fits: inverted lists on disk, RAM holds the quantizer",
    )


# --- building -------------------------------------------------------------------------------------------
def _train(index: faiss.Index, blocks: Blocks, n: int, cfg: IndexCfg, factory: str) -> None:
    """Train ``index`` on a seeded sample: 39-`TRAIN_PER_LIST` points per inverted list (at most 100k
    unless 39 per list need more), 50k for the codecs alone."""
    if index.is_trained:
        return
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    need = max(39 * ivf.nlist, min(TRAIN_PER_LIST * ivf.nlist, 100_000)) if ivf is not None else 50_000
    if ivf is not None and isinstance(faiss.downcast_index(ivf), faiss.IndexIVFPQ):
        faiss.downcast_index(ivf).do_polysemous_training = False  # minutes, and unused by this search
    sample = _sample_rows(blocks, n, need, cfg.seed)
    if ivf is not None and len(sample) < ivf.nlist:
        raise InputError(
            f"index kind {factory!r} needs at least {ivf.nlist} vectors to train, the collection has {n}; "
            "use fewer lists or --index-kind auto"
        )
    started = time.perf_counter()
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    LOG.info("trained %s on %d vectors in %.1f s", factory, len(sample), time.perf_counter() - started)


def build_in_memory(blocks: Blocks, n: int, d: int, plan: Plan, cfg: IndexCfg) -> faiss.Index:
    """Train on a sample and fill from the blocks: memory is one block plus the index."""
    index = faiss.index_factory(d, plan.built, METRIC)
    inner = faiss.downcast_index(index.index) if hasattr(index, "index") and index.index else index
    if isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efConstruction = cfg.hnsw_ef_construction
    _train(index, blocks, n, cfg, plan.factory)
    started = time.perf_counter()
    added = 0
    for vectors, ids in blocks():
        assert vectors.shape[1] == d, (vectors.shape, d)
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))
        added += len(ids)
    assert added == n, f"shards yielded {added} vectors, expected {n}"
    LOG.info("added %d vectors to %s in %.1f s", n, plan.built, time.perf_counter() - started)
    return index


def build_on_disk(
    blocks: Blocks, n: int, d: int, plan: Plan, cfg: IndexCfg, path: Path, chunk_rows: int
) -> tuple[faiss.Index, str]:
    """IVF shards of ``chunk_rows`` vectors each, merged into on-disk inverted lists beside ``path``.

    Returns:
        ``(index, ivfdata file name)``: the index refers to the ``.ivfdata`` file by name (opened with
        ``IO_FLAG_ONDISK_SAME_DIR``); the name is new for every build, so a reader of an older file is
        never disturbed.
    """
    from faiss.contrib.ondisk import merge_ondisk

    trained = faiss.index_factory(d, plan.built, METRIC)
    _train(trained, blocks, n, cfg, plan.factory)
    parts_dir = path.parent / f"{path.name}.parts{TMP_SUFFIX}"
    shutil.rmtree(parts_dir, ignore_errors=True)
    parts_dir.mkdir()
    try:
        trained_bytes = faiss.serialize_index(trained)
        parts: list[str] = []
        pending_v: list[np.ndarray] = []
        pending_i: list[np.ndarray] = []
        rows = 0

        def flush() -> None:
            nonlocal rows
            if not pending_v:
                return
            part = faiss.deserialize_index(trained_bytes)
            part.add_with_ids(np.concatenate(pending_v), np.concatenate(pending_i))
            name = str(parts_dir / f"part-{len(parts):05d}.index")
            faiss.write_index(part, name)
            parts.append(name)
            pending_v.clear(), pending_i.clear()
            rows = 0

        for vectors, ids in blocks():
            pending_v.append(np.ascontiguousarray(vectors, dtype=np.float32))
            pending_i.append(ids.astype(np.int64))
            rows += len(ids)
            if rows >= chunk_rows:
                flush()
        flush()
        ivfdata = f"{path.name}.{secrets.token_hex(4)}.ivfdata"
        merge_ondisk(trained, parts, str(path.parent / ivfdata))
    finally:
        shutil.rmtree(parts_dir, ignore_errors=True)
    fsync_dir(path.parent)
    LOG.info("merged %d IVF shard(s) into %s", len(parts), ivfdata)
    return trained, ivfdata


def open_faiss(path: Path, info: FaissInfo, expected: Checksum | None = None) -> faiss.Index:
    """Open a FAISS file the way its `FaissInfo` says: read into RAM, memory-mapped (``IO_FLAG_MMAP_IFC``:
    pages are read when a search touches them), or with on-disk inverted lists opened read-only from the
    same directory (`faiss_index.read_index`, after checking ``expected`` when given)."""
    return read_index(path, expected, io=info.io)


# --- queries and tuning ---------------------------------------------------------------------------------
def path_points(starts: np.ndarray, targets: np.ndarray, per_path: int) -> np.ndarray:
    """Points of the engine's ascent path from each start toward its target: geodesic steps of
    `PATH_STEP` radians (at most `PATH_MAX_STEPS`), ``per_path`` of them spread along each path.

    Args:
        starts: ``(m, d)`` unit vectors (items of the collection).
        targets: ``(m, d)`` unit vectors (items of the other modality).
        per_path: points kept per path.

    Returns:
        ``(m * per_path, d)`` float32 unit vectors.
    """
    out = []
    for a, b in zip(starts.astype(np.float64), targets.astype(np.float64), strict=True):
        cos = float(np.clip(a @ b, -1.0, 1.0))
        angle = math.acos(cos)
        ortho = b - cos * a
        norm = np.linalg.norm(ortho)
        if norm < 1e-9 or angle < PATH_STEP:
            continue
        ortho /= norm
        steps = min(PATH_MAX_STEPS, int(angle / PATH_STEP))
        chosen = np.unique(np.linspace(1, steps, num=min(per_path, steps)).round().astype(int))
        for step in chosen:
            t = step * PATH_STEP
            out.append(math.cos(t) * a + math.sin(t) * ortho)
    if not out:
        return np.empty((0, starts.shape[1]), np.float32)
    points = np.asarray(out, dtype=np.float32)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def query_sets(
    blocks: Blocks, n: int, cross: tuple[Blocks, int] | None, kind: str, cfg: IndexCfg
) -> dict[str, np.ndarray]:
    """The recall queries of a collection by kind: ``stored``, the other modality's name (when the
    other collection holds vectors) and ``path``."""
    size = cfg.recall_sample
    stored = _sample_rows(blocks, n, size, cfg.seed + 1)
    sets = {"stored": stored}
    if cross is not None and cross[1] > 0:
        other = _sample_rows(cross[0], cross[1], size, cfg.seed + 2)
        sets[CROSS_NAMES.get(kind, "cross")] = other
        per_path = 8
        m = max(1, min(len(stored), len(other), size // per_path))
        rng = np.random.default_rng(cfg.seed + 3)
        points = path_points(
            stored[rng.permutation(len(stored))[:m]], other[rng.permutation(len(other))[:m]], per_path
        )
        if len(points):
            sets["path"] = points
    return sets


def _ladder(kind: str, index: faiss.Index, k: int) -> list[dict[str, int]]:
    """Search parameters from cheapest to most thorough."""
    if kind == "hnsw":
        return [{"efSearch": ef} for ef in _EF_LADDER if ef >= k]
    if kind == "ivf":
        nlist = faiss.extract_index_ivf(index).nlist
        return [{"nprobe": 2**i} for i in range(int(math.log2(nlist)) + 1)] or [{"nprobe": 1}]
    return [{}]


def _hits(
    dist: np.ndarray, labels: np.ndarray, exact_D: np.ndarray, exact_I: np.ndarray, exact_scores: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Per query: ``(hits, truths)`` of `faiss_index.recall_at_k` (whose value is ``hits.sum() /
    truths.sum()``): a returned id counts when it is in the exact top-k, or (``exact_scores``) when its
    score ties the k-th exact score."""
    valid = exact_I >= 0
    truths = valid.sum(1)
    kth = exact_D[np.arange(len(exact_D)), np.maximum(truths - 1, 0)]
    rank = np.cumsum(labels >= 0, axis=1)  # the first `truths` returned ids are judged
    judged = (labels >= 0) & (rank <= truths[:, None])
    ok = (labels[:, :, None] == np.where(valid, exact_I, -2)[:, None, :]).any(2)
    if exact_scores:
        ok |= dist >= kth[:, None] - 1e-5
    return (ok & judged).sum(1), truths


def tune(
    index: faiss.Index, kind: str, factory: str, queries: dict[str, np.ndarray], blocks: Blocks, cfg: IndexCfg
) -> tuple[dict[str, int], dict[str, dict[str, Any]]]:
    """The cheapest search parameters whose recall@k reaches ``cfg.recall_target`` for every query kind.

    ``nprobe`` / ``efSearch`` doubles until every kind passes. With a re-ranking stage (``RFlat``,
    ``Refine(SQ8)``) that walk runs at the deepest re-ranking depth (``k_factor`` 64), so each ``nprobe``
    is judged at its best recall and the first that passes is the fewest lists that can; then the depth is
    halved while every kind still passes and loses at most `DEPTH_LOSS` recall on the probe against the
    deepest depth.
    Re-ranking a few hundred rows costs less than scanning twice the lists, and a walk at a shallow depth
    would stall where coarse 4-bit codes, not the lists, limit the recall; a depth that only just passes
    leaves no margin for queries the tuning did not see, so depth is given up only where it buys nothing.

    Each setting is first measured on `PROBE_QUERIES` queries per kind (their exact top-k computed once):
    it fails when some kind's recall + `PROBE_Z` standard errors misses the target, passes when every
    kind's recall - `PROBE_Z` standard errors reaches it (the standard error of a mean per-query recall,
    at least ``1 / (k sqrt(queries))``: the bound is at least +-0.02 wide for 100 queries and k=10).
    Otherwise it is measured on all the queries (the rest's exact top-k computed once, when first
    needed) and passes when every kind's recall reaches the target, as a measurement of all the queries
    always decided. So the choice is the one the full measurement makes, barring a probe that misjudges
    by more than its bound.

    Returns:
        ``(search_params, {query kind: {"recall_at_k", "queries"}})`` measured with those parameters (on
        the queries that decided); when no setting reaches the target the most thorough one is kept and
        its recall recorded.
    """
    k = cfg.recall_k
    names = [name for name, q in queries.items() if len(q)]
    if not names or index.ntotal == 0:
        return {}, {}
    exact_scores = factory.upper().split(",")[-1] in ("FLAT", "RFLAT")
    refine = factory.upper().endswith(",RFLAT") or ",REFINE(" in factory.upper()
    started = time.perf_counter()

    def stage(parts: dict[str, np.ndarray]) -> dict[str, Any]:
        """Queries of several kinds with their exact top-k (one pass over the vectors)."""
        kept = [name for name in names if len(parts[name])]
        xq = np.concatenate([parts[name] for name in kept]).astype(np.float32)
        exact_D, exact_I = exact_knn(xq, blocks, k)
        bounds = np.cumsum([0] + [len(parts[name]) for name in kept])
        return {
            name: (
                xq[bounds[i] : bounds[i + 1]],
                exact_D[bounds[i] : bounds[i + 1]],
                exact_I[bounds[i] : bounds[i + 1]],
            )
            for i, name in enumerate(kept)
        }

    probe = stage({name: queries[name][:PROBE_QUERIES] for name in names})
    sequential = any(len(queries[name]) > PROBE_QUERIES for name in names)
    full: dict[str, Any] = {}

    def measure(params: dict[str, int], sets: dict[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        xq = np.concatenate([sets[name][0] for name in names])
        dist, labels = search(index, xq, k, make_search_params(kind, params))
        out, start = {}, 0
        for name in names:
            m = len(sets[name][0])
            out[name] = _hits(
                dist[start : start + m], labels[start : start + m], *sets[name][1:], exact_scores
            )
            start += m
        return out

    def recalls(measured: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
        return {name: float(h.sum() / t.sum()) if t.sum() else 1.0 for name, (h, t) in measured.items()}

    def evaluate(params: dict[str, int]) -> tuple[bool, dict[str, float], dict[str, int]]:
        """``(passes, recall by kind, queries by kind)``: on the probe when it decides, else on all."""
        measured = measure(params, probe)
        got = recalls(measured)
        if sequential:
            margin = {
                name: PROBE_Z * max(float(np.std(h / np.maximum(t, 1), ddof=1)), 1.0 / k) / math.sqrt(len(h))
                for name, (h, t) in measured.items()
            }
            fails = any(got[name] + margin[name] < cfg.recall_target for name in names)
            clear = all(got[name] - margin[name] >= cfg.recall_target for name in names)
            if fails or clear:
                LOG.info("recall@%d of %s with %s on the probe: %s", k, factory, params or "defaults", got)
                return clear, got, {name: len(measured[name][0]) for name in names}
            if not full:
                rest = stage({name: queries[name][PROBE_QUERIES:] for name in names})
                for name in names:
                    parts = [probe[name]] + ([rest[name]] if name in rest else [])
                    full[name] = tuple(np.concatenate([p[j] for p in parts]) for j in range(3))
            measured = measure(params, full)
            got = recalls(measured)
        LOG.info("recall@%d of %s with %s: %s", k, factory, params or "defaults", got)
        return min(got.values()) >= cfg.recall_target, got, {name: len(measured[name][0]) for name in names}

    extra = {"k_factor": _K_FACTORS[-1]} if refine else {}
    params: dict[str, int] = {}
    ok, got, counts = False, {}, {}
    for rung in _ladder(kind, index, k):
        params = {**rung, **extra}
        ok, got, counts = evaluate(params)
        if ok:
            break
    if refine and ok:
        deepest = recalls(measure(params, probe))
        for depth in _K_FACTORS[-2::-1]:
            trial = {**params, "k_factor": depth}
            shallow = recalls(measure(trial, probe))
            if any(shallow[name] < deepest[name] - DEPTH_LOSS for name in names):
                LOG.info("re-ranking depth %d loses recall on the probe: %s vs %s", depth, shallow, deepest)
                break
            trial_ok, trial_got, trial_counts = evaluate(trial)
            if not trial_ok:
                break
            params, got, counts = trial, trial_got, trial_counts
    LOG.info("tuned %s to %s in %.1f s", factory, params or "defaults", time.perf_counter() - started)
    report = {
        name: {f"recall_at_{k}": round(float(got[name]), 4), "queries": int(counts[name])} for name in names
    }
    return dict(params), report


# --- the one entry point of a build --------------------------------------------------------------------
def collection_budget(total: int | None, n: int, n_other: int) -> int | None:
    """A collection's share of the index budget: in proportion to its vectors."""
    if total is None:
        return None
    return max(1, int(total * n / max(n + n_other, 1)))


def write_faiss(
    blocks: Blocks,
    n: int,
    d: int,
    cfg: IndexCfg,
    index_kind: str,
    path: Path,
    kind: str = "images",
    cross: tuple[Blocks, int] | None = None,
) -> FaissInfo:
    """Choose (by ``cfg.memory_budget`` and size), build, tune and write the FAISS file of a collection.

    Args:
        blocks: callable returning a fresh iterator of ``(vectors (m, d) float32, ids (m,) int64)``.
        n: vectors the blocks yield.
        d: their width.
        cfg: `IndexCfg` (``memory_budget``: bytes for both collections, shared by count).
        index_kind: ``auto`` or a FAISS factory string.
        path: the ``.faiss`` file to write (atomically; on-disk lists go beside it under a new name).
        kind: ``images`` or ``captions`` (names the cross-modal queries).
        cross: ``(blocks, n)`` of the other collection, for the cross-modal and path recall queries.

    Returns:
        FaissInfo, with ``io``, ``recall_by_query`` and ``memory`` filled.
    """
    started = time.perf_counter()
    budget = collection_budget(cfg.memory_budget, n, cross[1] if cross else 0)
    if cfg.memory_budget is None and cross is None:
        index, info = build_and_measure(blocks, n, d, cfg, index_kind)
        write_index_atomic(index, path)
        return info
    plan = plan_index(n, d, budget, cfg, index_kind)
    if index_kind and index_kind != "auto":
        new_index(d, plan.factory)  # a factory string FAISS cannot make is an InputError, even when empty
    files = [path.name]
    ivfdata = None
    old_ivfdata = sorted(path.parent.glob(f"{path.name}.*.ivfdata"))
    if n == 0:
        plan = Plan("flat", "Flat", "IDMap", plan.io, 0, 0, budget, "empty collection")
        index = faiss.index_factory(d, plan.built, METRIC)
    elif plan.io == "ondisk":
        chunk_rows = max(10_000, int((budget or 10**9) // max(4 * d, 1) // 2))
        index, ivfdata = build_on_disk(blocks, n, d, plan, cfg, path, chunk_rows)
        files.append(ivfdata)
    else:
        index = build_in_memory(blocks, n, d, plan, cfg)
    built = time.perf_counter()
    base_kind = _kind_of(plan.factory)
    queries = query_sets(blocks, n, cross, kind, cfg) if n else {}
    params, by_query = tune(index, base_kind, plan.factory, queries, blocks, cfg)
    if plan.factory.endswith(",Refine(SQ8)") and _worst(by_query, cfg) < cfg.recall_target:
        # 8-bit codes rank near-ties approximately; on some collections that caps recall below the target
        # at any depth: then exact re-ranking from the vectors on disk, past the budget, as recall comes first
        plan = _exact_refine(plan, n, d, _worst(by_query, cfg), cfg)
        LOG.warning("%s: %s", path.name, plan.reason)
        index = build_in_memory(blocks, n, d, plan, cfg)
        params, by_query = tune(index, base_kind, plan.factory, queries, blocks, cfg)
    LOG.info(
        "%s: built (train + add) in %.1f s, tuned in %.1f s",
        path.name,
        built - started,
        time.perf_counter() - built,
    )
    stored = by_query.get("stored", {})
    write_index_atomic(index, path)
    for old in old_ivfdata:  # readers that mapped it keep the inode; new readers open the new name
        if old.name != ivfdata:
            old.unlink(missing_ok=True)
    info = FaissInfo(
        kind=base_kind,
        factory=plan.factory,
        ntotal=n,
        search_params=params,
        recall_at_k=stored.get(f"recall_at_{cfg.recall_k}") if n else None,
        recall_k=cfg.recall_k,
        recall_queries=int(stored.get("queries", 0)),
        seconds=time.perf_counter() - started,
        io=plan.io,
        recall_by_query=by_query,
        memory={**plan.to_dict(), "files": files},
    )
    worst = _worst(by_query, cfg)
    if worst < cfg.recall_target:
        LOG.warning(
            "%s: recall@%d %.3f below the target %.2f at the most thorough search parameters",
            path.name,
            cfg.recall_k,
            worst,
            cfg.recall_target,
        )
    LOG.info("%s: %s (%s) %s in %.1f s", path.name, plan.factory, plan.io, params, info.seconds)
    return info


def _worst(by_query: dict[str, dict[str, Any]], cfg: IndexCfg) -> float:
    """The lowest recall@k over the query kinds measured by `tune`."""
    return min((v[f"recall_at_{cfg.recall_k}"] for v in by_query.values()), default=1.0)


def _exact_refine(plan: Plan, n: int, d: int, reached: float, cfg: IndexCfg) -> Plan:
    """``plan`` (fast scan re-ranked with 8-bit codes) re-ranked with the exact vectors instead, read from
    disk beyond the budget."""
    ram = plan.ram_bytes - n * d
    reason = (
        f"re-ranking with 8-bit codes reached recall@{cfg.recall_k} {reached:.3f} < {cfg.recall_target}; "
        "exact re-ranking from the vectors on disk, beyond the budget"
    )
    factory = plan.factory.removesuffix("Refine(SQ8)") + "RFlat"
    return replace(plan, factory=factory, ram_bytes=ram, disk_bytes=ram + n * 4 * d, reason=reason)


def iterate_arrays(vectors: np.ndarray, ids: np.ndarray, block: int = 65536) -> Blocks:
    """`Blocks` over arrays in memory (tests, benchmarks)."""

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(ids), block):
            yield vectors[start : start + block], ids[start : start + block]

    return blocks
