"""FAISS indexes over the shards: choose a kind by size, build from shard iterators, measure recall@k
against exact search, tune the search parameter, search. Plain functions over arrays (faiss contrib style).

Every index is an ``IndexIDMap2`` over an inner-product index, so FAISS ids are the ``items.sqlite`` ids.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from counterclip._fileio import atomic_write
from counterclip.errors import IndexDamagedError, InputError
from counterclip.index_builder.checksums import (
    Checksum,
    HashingWriter,
    checksum_bytes,
    checksum_file,
    size_reason,
)
from counterclip.index_builder.config import IndexCfg
from counterclip.index_builder.manifest import damaged_error

LOG = logging.getLogger(__name__)
METRIC = faiss.METRIC_INNER_PRODUCT
Blocks = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]  # a fresh iterator of (vectors, ids) per call
_EF_LADDER = (16, 32, 64, 128, 256, 512, 1024, 2048)


@dataclass
class FaissInfo:
    """What the manifest records about one FAISS index."""

    kind: str  # "flat" | "hnsw" | "ivf" | "custom"
    factory: str  # FAISS factory string (without the IDMap2 prefix)
    ntotal: int  # vectors in the index
    search_params: dict[str, int] = field(default_factory=dict)  # {"efSearch": n} or {"nprobe": n}
    recall_at_k: float | None = None  # measured against exact search (None when empty)
    recall_k: int = 10  # the k of recall_at_k
    recall_queries: int = 0  # sampled query vectors
    seconds: float = 0.0  # build + measurement time
    io: str = "ram"  # how `Index` opens the file: ram | mmap | ondisk (`read_index`)
    recall_by_query: dict[str, Any] = field(default_factory=dict)  # per query kind (`budget.tune`)
    memory: dict[str, Any] = field(default_factory=dict)  # the memory-budget plan (`budget.Plan.to_dict`)

    def to_dict(self) -> dict[str, Any]:
        return {
            "io": self.io,
            "recall_by_query": dict(self.recall_by_query),
            "memory": dict(self.memory),
            "kind": self.kind,
            "factory": self.factory,
            "ntotal": self.ntotal,
            "search_params": dict(self.search_params),
            f"recall_at_{self.recall_k}": self.recall_at_k,
            "recall_k": self.recall_k,
            "recall_queries": self.recall_queries,
            "seconds": round(self.seconds, 3),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaissInfo:
        k = int(data.get("recall_k", 10))
        return cls(
            kind=data["kind"],
            factory=data["factory"],
            ntotal=int(data["ntotal"]),
            search_params=dict(data.get("search_params", {})),
            recall_at_k=data.get(f"recall_at_{k}"),
            recall_k=k,
            recall_queries=int(data.get("recall_queries", 0)),
            seconds=float(data.get("seconds", 0.0)),
            io=str(data.get("io", "ram")),
            recall_by_query=dict(data.get("recall_by_query") or {}),
            memory=dict(data.get("memory") or {}),
        )


def choose_factory(n: int, d: int, cfg: IndexCfg, override: str = "auto") -> tuple[str, str]:
    """Pick ``(kind, factory)`` for ``n`` vectors of width ``d``.

    Exact (``Flat``) up to ``cfg.exact_max``, ``HNSW{M},Flat`` up to ``cfg.hnsw_max``, then
    ``IVF{nlist},{codec}`` with ``nlist`` ~ 4 sqrt(n) (a power of two), like autofaiss. ``override``
    other than ``auto`` is a FAISS factory string used as given.
    """
    if override and override != "auto":
        factory = override.strip()
        if factory.upper().startswith("IDMAP"):
            factory = factory.split(",", 1)[1] if "," in factory else "Flat"
        return _kind_of(factory), factory
    if n <= cfg.exact_max:
        return "flat", "Flat"
    if n <= cfg.hnsw_max:
        return "hnsw", f"HNSW{cfg.hnsw_m},Flat"
    nlist = 2 ** round(math.log2(max(16.0, 4 * math.sqrt(n))))
    return "ivf", f"IVF{nlist},{cfg.ivf_codec}"


def _kind_of(factory: str) -> str:
    head = factory.split(",")[0].upper()
    if head == "FLAT":
        return "flat"
    if head.startswith("HNSW"):
        return "hnsw"
    if head.startswith("IVF"):
        return "ivf"
    return "custom"


def new_index(d: int, factory: str) -> faiss.Index:
    """``IDMap2,{factory}`` with the inner-product metric; a bad factory string is an `InputError`."""
    try:
        return faiss.index_factory(d, f"IDMap2,{factory}", METRIC)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "invalid"
        raise InputError(
            f"invalid FAISS index kind {factory!r} ({first[:160]}); use auto or a factory string like "
            "Flat, HNSW32,Flat or IVF256,SQ8"
        ) from None


def _sample_rows(blocks: Blocks, n: int, size: int, seed: int) -> np.ndarray:
    """A seeded uniform sample of ``min(size, n)`` rows, read block by block."""
    size = min(size, n)
    chosen = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    out, start = [], 0
    for vectors, _ in blocks():
        stop = start + len(vectors)
        inside = chosen[(chosen >= start) & (chosen < stop)] - start
        if len(inside):
            out.append(np.asarray(vectors[inside], dtype=np.float32))
        start = stop
    return np.concatenate(out) if out else np.empty((0, 0), np.float32)


def build_from_blocks(blocks: Blocks, n: int, d: int, factory: str, cfg: IndexCfg) -> faiss.Index:
    """Train (when needed) and fill an index from shard blocks; memory is one block plus the index.

    Args:
        blocks: callable returning a fresh iterator of ``(vectors (m, d) float32, ids (m,) int64)``.
        n: total number of vectors the iterator yields.
        d: vector width.
        factory: FAISS factory string (see `choose_factory`).
        cfg: `IndexCfg` (HNSW build width, training-sample seed).

    Returns:
        a filled ``IndexIDMap2``.
    """
    started = time.perf_counter()
    index = new_index(d, factory)
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efConstruction = cfg.hnsw_ef_construction
    if not index.is_trained:
        ivf = faiss.extract_index_ivf(index) if _kind_of(factory) == "ivf" else None
        need = 64 * ivf.nlist if ivf is not None else 50_000
        sample = _sample_rows(blocks, n, max(need, 1000), cfg.seed)
        if ivf is not None and len(sample) < ivf.nlist:
            raise InputError(
                f"index kind {factory!r} needs at least {ivf.nlist} vectors to train, the index has {n}; "
                "use fewer lists or --index-kind auto"
            )
        try:
            index.train(sample)
        except RuntimeError as exc:
            raise InputError(
                f"cannot train FAISS index {factory!r} on {len(sample)} vectors: {exc}"
            ) from None
    added = 0
    for vectors, ids in blocks():
        assert vectors.shape[1] == d, (vectors.shape, d)
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))
        added += len(ids)
    assert added == n, f"shards yielded {added} vectors, expected {n}"
    LOG.info("built FAISS %s over %d vectors in %.2f s", factory, n, time.perf_counter() - started)
    return index


def exact_knn(xq: np.ndarray, blocks: Blocks, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-``k`` over all blocks: ``(D (nq, k), I (nq, k) ids)``, -1 padded."""
    assert xq.ndim == 2
    heap = faiss.ResultHeap(len(xq), k, keep_max=True)
    for vectors, ids in blocks():
        kk = min(k, len(vectors))
        if kk == 0:
            continue
        dist, pos = faiss.knn(xq, np.ascontiguousarray(vectors, dtype=np.float32), kk, metric=METRIC)
        dist, pos = _pad(dist, pos, k)
        heap.add_result(dist, np.where(pos >= 0, ids[np.maximum(pos, 0)], -1))
    heap.finalize()
    return heap.D, heap.I


def _pad(dist: np.ndarray, pos: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if dist.shape[1] == k:
        return dist, pos
    nq, kk = dist.shape
    dist_p = np.full((nq, k), -np.finfo(np.float32).max, dtype=np.float32)
    pos_p = np.full((nq, k), -1, dtype=np.int64)
    dist_p[:, :kk], pos_p[:, :kk] = dist, pos
    return dist_p, pos_p


def recall_at_k(
    approx_D: np.ndarray, approx_I: np.ndarray, exact_D: np.ndarray, exact_I: np.ndarray, exact_scores: bool
) -> float:
    """Mean fraction of the exact top-k found by the approximate search.

    A returned id counts when it is in the exact top-k, or (when ``exact_scores``, i.e. the index stores
    raw vectors so its scores are exact) when its score ties the k-th exact score: among duplicates any
    choice is right.
    """
    nq, k = exact_I.shape
    hits = 0
    total = 0
    for q in range(nq):
        truth = exact_I[q][exact_I[q] >= 0]
        if not len(truth):
            continue
        kth = exact_D[q][len(truth) - 1]
        found = approx_I[q][approx_I[q] >= 0][: len(truth)]
        ok = np.isin(found, truth)
        if exact_scores:
            ok |= approx_D[q][: len(found)] >= kth - 1e-5
        hits += int(ok.sum())
        total += len(truth)
    return hits / total if total else 1.0


def make_search_params(
    kind: str, params: dict[str, int], k: int | None = None, tuned_k: int = 10
) -> faiss.SearchParameters | None:
    """Per-call FAISS search parameters (never mutate a shared index per request).

    ``k_factor`` is the re-ranking depth of an index with a refine stage (``...,RFlat``), tuned for
    recall@``tuned_k``: the refine stage re-ranks ``tuned_k * k_factor`` candidates for ``tuned_k``
    results. A search for ``k > tuned_k`` results re-ranks ``k`` plus the same ``tuned_k * (k_factor - 1)``
    extra candidates, not ``k * k_factor``: the extra rows cover how far coarse codes misplace the true
    neighbours, which does not grow with ``k`` (the engine gathers 64-256 neighbours per query; multiplied,
    that re-ranked 16k rows per query, read from disk).
    """
    base = None
    if kind == "hnsw" and "efSearch" in params:
        base = faiss.SearchParametersHNSW(efSearch=int(params["efSearch"]))
    if kind == "ivf" and "nprobe" in params:
        base = faiss.SearchParametersIVF(nprobe=int(params["nprobe"]))
    if "k_factor" in params:
        factor = float(params["k_factor"])
        if k is not None and k > tuned_k:
            factor = (k + tuned_k * (factor - 1.0)) / k
        return faiss.IndexRefineSearchParameters(k_factor=factor, base_index_params=base)
    return base


def search(
    index: faiss.Index, xq: np.ndarray, k: int, params: faiss.SearchParameters | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner-product search.

    Args:
        index: a FAISS index over ``d``-wide vectors.
        xq: ``(nq, d)`` float32 queries.
        k: results per query.
        params: optional per-call search parameters.

    Returns:
        ``D (nq, k)`` float32 inner products (``-inf`` for padding), ``I (nq, k)`` int64 ids (``-1`` padding).
    """
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    assert xq.ndim == 2 and xq.shape[1] == index.d, (xq.shape, index.d)
    assert k >= 1
    nq = xq.shape[0]
    if index.ntotal == 0 or nq == 0:
        return np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64)
    dist, labels = index.search(xq, k, params=params) if params is not None else index.search(xq, k)
    dist = dist.astype(np.float32, copy=False)
    dist[labels < 0] = -np.inf
    return dist, labels.astype(np.int64, copy=False)


def tune_and_measure(
    index: faiss.Index, kind: str, factory: str, blocks: Blocks, n: int, cfg: IndexCfg
) -> tuple[dict[str, int], float | None, int]:
    """Measure recall@k on a sample of stored vectors and raise the search parameter until the target.

    Returns:
        ``(search_params, recall, n_queries)``; recall None for an empty index.
    """
    if n == 0:
        return {}, None, 0
    k = cfg.recall_k
    xq = _sample_rows(blocks, n, cfg.recall_sample, cfg.seed + 1)
    exact_D, exact_I = exact_knn(xq, blocks, k)
    exact_scores = factory.split(",")[-1].strip().upper() == "FLAT"
    if kind == "hnsw":
        ladder = [{"efSearch": ef} for ef in _EF_LADDER if ef >= k]
    elif kind == "ivf":
        nlist = faiss.extract_index_ivf(index).nlist
        ladder = [{"nprobe": p} for p in (2**i for i in range(int(math.log2(nlist)) + 1))]
        ladder = ladder or [{"nprobe": 1}]
    else:
        ladder = [{}]
    recall = 0.0
    params: dict[str, int] = {}
    for params in ladder:
        dist, labels = search(index, xq, k, make_search_params(kind, params))
        recall = recall_at_k(dist, labels, exact_D, exact_I, exact_scores)
        LOG.info("recall@%d of %s with %s: %.4f", k, factory, params or "defaults", recall)
        if recall >= cfg.recall_target:
            break
    return params, float(recall), len(xq)


def build_and_measure(
    blocks: Blocks, n: int, d: int, cfg: IndexCfg, override: str = "auto"
) -> tuple[faiss.Index, FaissInfo]:
    """`choose_factory` + `build_from_blocks` + `tune_and_measure` -> (index, FaissInfo)."""
    started = time.perf_counter()
    kind, factory = choose_factory(n, d, cfg, override)
    index = build_from_blocks(blocks, n, d, factory, cfg)
    params, recall, nq = tune_and_measure(index, kind, factory, blocks, n, cfg)
    info = FaissInfo(kind, factory, n, params, recall, cfg.recall_k, nq, time.perf_counter() - started)
    return index, info


def write_index_atomic(index: faiss.Index, path: Path) -> Checksum:
    """``faiss.write_index`` through `atomic_write` (streamed: no second copy in memory); returns the
    file's checksum, computed on the way."""
    writers: list[HashingWriter] = []

    def write(handle) -> None:  # noqa: ANN001
        hashing = HashingWriter(handle)
        writer = faiss.PyCallbackIOWriter(hashing.write)
        faiss.write_index(index, writer)
        del writer  # flushes FAISS's buffer into the handle
        writers.append(hashing)

    atomic_write(path, write)
    return writers[-1].checksum()


def read_index(path: Path, expected: Checksum | None = None, io: str = "ram") -> faiss.Index:
    """Read a FAISS index file, after checking its bytes against ``expected`` (FAISS itself parses
    garbage without complaint: a garbled file would rank with absurd scores).

    Args:
        path: the ``.faiss`` file.
        expected: its recorded size and checksum (None: not checked).
        io: ``ram`` (read whole), ``mmap`` (``IO_FLAG_MMAP_IFC``: pages read when a search touches them) or
            ``ondisk`` (inverted lists in a ``.ivfdata`` file beside it, opened read-only); see `budget`.
            The checksum of a mapped file is computed streaming, so RAM stays what the mapping needs.

    Raises:
        IndexDamagedError: missing, not the recorded bytes, or not a FAISS index.
    """
    try:
        if io == "ram":
            data = path.read_bytes()
            got = checksum_bytes(data) if expected is not None else None
        else:
            data = None
            got = checksum_file(path) if expected is not None else None
    except FileNotFoundError:
        raise _damaged(path, "missing") from None
    if expected is not None and got is not None:
        if got.size != expected.size:
            raise _damaged(path, size_reason(got.size, expected.size))
        if got.xxh3 != expected.xxh3:
            raise _damaged(path, "checksum mismatch")
    try:
        if data is not None:
            return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        if io == "ondisk":
            return faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
        if io == "mmap" and hasattr(faiss, "IO_FLAG_MMAP_IFC"):
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
            release_mapped_pages(path)
            return index
        return faiss.read_index(str(path))
    except (RuntimeError, MemoryError) as exc:
        first = str(exc).strip().splitlines()[-1][:120] if str(exc).strip() else type(exc).__name__
        raise _damaged(path, f"not a readable FAISS index: {first}") from None


def release_mapped_pages(path: Path) -> int:
    """Drop from this process's resident memory the pages of ``path``'s read-only mappings; returns the
    bytes advised (0 where ``/proc/self/maps`` does not exist).

    Reading a mapped index copies what FAISS cannot map (the inverted lists of a fast-scan index: ~80 MB
    at 1M vectors) out of the file, and the pages it read stay resident, never read again. ``MADV_DONTNEED``
    releases them; the mapping stays, and a page a search needs (the mapped codes) comes back from the
    page cache on demand, unchanged (the mapping is read-only).
    """
    import ctypes
    import os

    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return 0
    target = os.path.realpath(path)
    libc = ctypes.CDLL(None, use_errno=True)
    madvise = libc.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    advised = 0
    for line in maps:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[5] != target or "w" in fields[1]:
            continue
        start, stop = (int(x, 16) for x in fields[0].split("-"))
        if madvise(start, stop - start, 4) == 0:  # MADV_DONTNEED
            advised += stop - start
    return advised


def stored_ids(index: faiss.Index) -> np.ndarray:
    """The ids a FAISS index holds, in its own order: from the id map of an ``IDMap`` index, from the
    inverted lists of an IVF index (in RAM, mapped or on disk), positions otherwise."""
    if index.ntotal == 0:
        return np.empty(0, np.int64)
    if hasattr(index, "id_map"):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return np.arange(index.ntotal, dtype=np.int64)
    lists = ivf.invlists
    parts = []
    for number in range(lists.nlist):
        size = lists.list_size(number)
        if size:
            parts.append(faiss.rev_swig_ptr(lists.get_ids(number), size).copy())
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)


def _damaged(path: Path, reason: str) -> IndexDamagedError:
    return damaged_error(path.parent, path.name, reason)


def check_search_result(
    xq: np.ndarray, dist: np.ndarray, labels: np.ndarray, known_ids: np.ndarray, name: str, index_dir: Path
) -> None:
    """Inner products of unit vectors are bounded by the query's norm, and every id must exist: a FAISS
    index that answers otherwise is damaged (`IndexDamagedError` naming ``name``)."""
    found = labels >= 0
    if not found.any():
        return
    bound = np.linalg.norm(xq.astype(np.float64), axis=1, keepdims=True) * 1.01 + 1e-4
    bad_score = found & ~(np.abs(dist) <= bound)
    reason = None
    if bad_score.any():
        reason = f"it returned the score {float(dist[bad_score][0]):.4g} for unit vectors"
    else:
        ids = labels[found]
        pos = np.minimum(np.searchsorted(known_ids, ids), max(len(known_ids) - 1, 0))
        unknown = ids[(known_ids[pos] != ids)] if len(known_ids) else ids
        if len(unknown):
            reason = f"it returned id {int(unknown[0])}, which is not in the index"
    if reason is not None:
        raise damaged_error(index_dir, name, reason)
