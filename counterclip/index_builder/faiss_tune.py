"""Search parameters of a built FAISS index, tuned to a recall target: `tune`, on `query_sets`.

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
import time
from typing import Any

import faiss
import numpy as np

from counterclip.index_builder.config import IndexCfg
from counterclip.index_builder.faiss_index import Blocks, _sample_rows, exact_knn, make_search_params, search

# one logger for the budgeted FAISS build (budget.py; scripts/bench_scale.py follows it)
LOG = logging.getLogger("counterclip.index_builder.budget")
PATH_STEP = 0.06  # radians per step of the engine's path (engine/path.py PathSettings.step_angle)
PATH_MAX_STEPS = 32  # steps + extra steps of the engine's path
CROSS_NAMES = {"images": "text_to_image", "captions": "image_to_text"}  # queries from the other modality
_EF_LADDER = (16, 32, 64, 128, 256, 512, 1024, 2048)
_K_FACTORS = (2, 4, 8, 16, 32, 64)  # re-ranking depths (k_factor), shallowest first
DEPTH_LOSS = 0.005  # recall a shallower re-ranking depth may lose on the probe (`tune`)
PROBE_QUERIES = 100  # queries per kind a setting is first measured on (`tune`)
PROBE_Z = 2.0  # standard errors by which the probe's recall must clear or miss the target to decide
Measured = dict[str, tuple[np.ndarray, np.ndarray]]  # query kind -> (hits, truths) per query


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


def hits_per_query(
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


def _recalls(measured: Measured) -> dict[str, float]:
    return {name: float(h.sum() / t.sum()) if t.sum() else 1.0 for name, (h, t) in measured.items()}


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
    started = time.perf_counter()
    tuner = _Tuner(index, kind, factory, queries, names, blocks, cfg)
    refine = factory.upper().endswith(",RFLAT") or ",REFINE(" in factory.upper()
    extra = {"k_factor": _K_FACTORS[-1]} if refine else {}
    params: dict[str, int] = {}
    ok, got, counts = False, {}, {}
    for rung in _ladder(kind, index, k):
        params = {**rung, **extra}
        ok, got, counts = tuner.evaluate(params)
        if ok:
            break
    if refine and ok:
        params, got, counts = tuner.shallower(params, got, counts)
    LOG.info("tuned %s to %s in %.1f s", factory, params or "defaults", time.perf_counter() - started)
    report = {
        name: {f"recall_at_{k}": round(float(got[name]), 4), "queries": int(counts[name])} for name in names
    }
    return dict(params), report


class _Tuner:
    """Measures search parameters on the probe queries, and on all of them when the probe cannot decide."""

    def __init__(
        self,
        index: faiss.Index,
        kind: str,
        factory: str,
        queries: dict[str, np.ndarray],
        names: list[str],
        blocks: Blocks,
        cfg: IndexCfg,
    ) -> None:
        self.index, self.kind, self.factory, self.queries = index, kind, factory, queries
        self.names, self.blocks, self.cfg, self.k = names, blocks, cfg, cfg.recall_k
        self.exact_scores = factory.upper().split(",")[-1] in ("FLAT", "RFLAT")
        self.probe = self._stage({name: queries[name][:PROBE_QUERIES] for name in names})
        self.sequential = any(len(queries[name]) > PROBE_QUERIES for name in names)
        self.full: dict[str, Any] = {}

    def _stage(self, parts: dict[str, np.ndarray]) -> dict[str, Any]:
        """Queries of several kinds with their exact top-k (one pass over the vectors)."""
        kept = [name for name in self.names if len(parts[name])]
        xq = np.concatenate([parts[name] for name in kept]).astype(np.float32)
        exact_D, exact_I = exact_knn(xq, self.blocks, self.k)
        bounds = np.cumsum([0] + [len(parts[name]) for name in kept])
        return {
            name: (
                xq[bounds[i] : bounds[i + 1]],
                exact_D[bounds[i] : bounds[i + 1]],
                exact_I[bounds[i] : bounds[i + 1]],
            )
            for i, name in enumerate(kept)
        }

    def measure(self, params: dict[str, int], sets: dict[str, Any]) -> Measured:
        """``(hits, truths)`` per query kind of a search with ``params`` over the query ``sets``."""
        xq = np.concatenate([sets[name][0] for name in self.names])
        dist, labels = search(self.index, xq, self.k, make_search_params(self.kind, params))
        out, start = {}, 0
        for name in self.names:
            m = len(sets[name][0])
            out[name] = hits_per_query(
                dist[start : start + m], labels[start : start + m], *sets[name][1:], self.exact_scores
            )
            start += m
        return out

    def evaluate(self, params: dict[str, int]) -> tuple[bool, dict[str, float], dict[str, int]]:
        """``(passes, recall by kind, queries by kind)``: on the probe when it decides, else on all."""
        names, target, k = self.names, self.cfg.recall_target, self.k
        measured = self.measure(params, self.probe)
        got = _recalls(measured)
        if self.sequential:
            margin = {
                name: PROBE_Z * max(float(np.std(h / np.maximum(t, 1), ddof=1)), 1.0 / k) / math.sqrt(len(h))
                for name, (h, t) in measured.items()
            }
            fails = any(got[name] + margin[name] < target for name in names)
            clear = all(got[name] - margin[name] >= target for name in names)
            if fails or clear:
                LOG.info(
                    "recall@%d of %s with %s on the probe: %s", k, self.factory, params or "defaults", got
                )
                return clear, got, {name: len(measured[name][0]) for name in names}
            measured = self.measure(params, self._full())
            got = _recalls(measured)
        LOG.info("recall@%d of %s with %s: %s", k, self.factory, params or "defaults", got)
        return min(got.values()) >= target, got, {name: len(measured[name][0]) for name in names}

    def _full(self) -> dict[str, Any]:
        """Every query with its exact top-k (the rest's computed once, when first needed)."""
        if not self.full:
            rest = self._stage({name: self.queries[name][PROBE_QUERIES:] for name in self.names})
            for name in self.names:
                parts = [self.probe[name]] + ([rest[name]] if name in rest else [])
                self.full[name] = tuple(np.concatenate([p[j] for p in parts]) for j in range(3))
        return self.full

    def shallower(
        self, params: dict[str, int], got: dict[str, float], counts: dict[str, int]
    ) -> tuple[dict[str, int], dict[str, float], dict[str, int]]:
        """Halve the re-ranking depth while every kind still passes and loses at most `DEPTH_LOSS` recall on
        the probe against the deepest depth; returns the last depth that did, with its measurement."""
        deepest = _recalls(self.measure(params, self.probe))
        for depth in _K_FACTORS[-2::-1]:
            trial = {**params, "k_factor": depth}
            shallow = _recalls(self.measure(trial, self.probe))
            if any(shallow[name] < deepest[name] - DEPTH_LOSS for name in self.names):
                LOG.info("re-ranking depth %d loses recall on the probe: %s vs %s", depth, shallow, deepest)
                break
            trial_ok, trial_got, trial_counts = self.evaluate(trial)
            if not trial_ok:
                break
            params, got, counts = trial, trial_got, trial_counts
        return params, got, counts
