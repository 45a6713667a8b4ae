"""A store's approximate search, chosen by size and tuned to the recall target, measured like FAISS's.

Up to `EXACT_MAX` vectors (FAISS's own exact limit, `IndexCfg.exact_max`) every store searches exactly.
Above it LanceDB gets an IVF-PQ index (about sqrt(n) lists, ``d/8`` sub-vectors of 8 bits) whose
``nprobes`` and ``refine_factor`` (re-ranking on the raw vectors) are raised until recall@k reaches the
target; a Qdrant server's HNSW graph gets its ``hnsw_ef`` raised the same way (Qdrant's embedded mode is
exact). Recall@k is measured as FAISS's is (`faiss_index.recall_at_k`, `faiss_tune`): ``recall_sample``
queries of each kind (stored vectors, the other modality's vectors, points of the engine's ascent path
from one toward the other), the exact top-k over all vectors as truth; a setting is tried on `PROBE`
queries per kind first and accepted when every kind's recall, less `Z` standard errors over its
queries, reaches the target (so the target holds for queries the tuning never saw, not only on its own
sample). The result (kind, settings, recall by kind of query, the lowest bound) is recorded in
``store.json``.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np

from counterclip.index_builder.config import IndexCfg
from counterclip.index_builder.faiss_index import exact_knn
from counterclip.index_builder.faiss_tune import hits_per_query, path_points
from counterclip.index_builder.stores.base import VectorStore

LOG = logging.getLogger(__name__)
EXACT_MAX = IndexCfg().exact_max  # up to this many vectors a store searches exactly (as FAISS does)
PROBE = 100  # queries a setting is first tried on
LANCE_LADDER = [
    (p, r) for p in (8, 16, 32, 64, 128, 256, 512) for r in (1, 4, 10, 30)
]  # (nprobes, refine_factor)
HNSW_EF = (16, 32, 64, 128, 256, 512, 1024)
Z = 2.0  # standard errors between a setting's measured recall and the bound it is accepted on


def sub_vectors(dim: int) -> int:
    """PQ sub-vectors for ``dim``: the largest divisor of ``dim`` at most ``dim / 8`` (8 dimensions each)."""
    return max([s for s in range(1, max(1, dim // 8) + 1) if dim % s == 0])


def tune(
    store: VectorStore,
    cfg: IndexCfg | None = None,
    exact_max: int = EXACT_MAX,
    build: bool = True,
    cross: np.ndarray | None = None,
    cross_name: str = "text_to_image",
) -> dict[str, Any]:
    """Choose, build and tune the store's search (see the module docstring); the record for ``store.json``.

    Args:
        store: a filled store.
        cfg: recall_k, recall_sample, recall_target and seed. Default: the ``default`` recipe's.
        exact_max: up to this many vectors the search is exact. Default: `EXACT_MAX`.
        build: make the ANN index (False for an attached collection, which is never written: its own
            index, if any, is tuned and measured).
        cross: ``(m, d)`` vectors of the other modality (captions for the images), queries of their own
            kind and the targets of the path queries. Default: None (stored vectors only).
        cross_name: that kind's name in ``recall_by_query``. Default: ``text_to_image``.
    """
    cfg = cfg or IndexCfg()
    started, n = time.perf_counter(), store.count()
    ladder: list[dict[str, Any]] = []
    record: dict[str, Any] = {"kind": "exact", "params": {}, "search_params": {}}
    if store.kind == "lancedb":
        if n > exact_max and build:
            dim = int(store.dim() or 0)
            partitions = max(1, min(int(math.sqrt(n)), n // 256))
            store.build_ann(partitions, sub_vectors(dim))  # type: ignore[attr-defined]
            record["params"] = {"partitions": partitions, "sub_vectors": sub_vectors(dim)}
        if store.has_ann() and n > exact_max:  # type: ignore[attr-defined]
            record["kind"] = "ivf_pq"
            ladder = [{"nprobes": p, "refine_factor": r} for p, r in LANCE_LADDER]
        elif store.has_ann():  # type: ignore[attr-defined]  # an app's index on a small table: bypassed
            record["search_params"] = {"exact": True}
            store.set_search_params(record["search_params"])
    elif store.kind == "qdrant" and not getattr(store, "local", True):
        if n > exact_max:
            record["kind"] = "hnsw"
            ladder = [{"hnsw_ef": ef} for ef in HNSW_EF]
        else:  # a server searches its HNSW graph unless told otherwise
            record["search_params"] = {"exact": True}
            store.set_search_params(record["search_params"])
    if n == 0 or not ladder:  # exact search: recall 1 by construction, nothing to tune
        record.update(
            recall_k=cfg.recall_k, recall_target=cfg.recall_target, recall_queries={}, recall_at_k=1.0
        )
    else:
        record.update(_measure(store, query_sets(store, n, cfg, cross, cross_name), cfg, ladder))
    record["seconds"] = round(time.perf_counter() - started, 2)
    LOG.info("%s: %s search, recall@%d %.3f", store.uri, record["kind"], cfg.recall_k, record["recall_at_k"])
    return record


def query_sets(
    store: VectorStore, n: int, cfg: IndexCfg, cross: np.ndarray | None, name: str
) -> dict[str, np.ndarray]:
    """The recall queries, by kind as FAISS's (`faiss_tune.query_sets`): ``stored`` vectors of the store,
    the other modality's (``name``: caption vectors for the images) and ``path`` points of the engine's
    ascent from one toward the other."""
    ids = np.sort(np.concatenate([b.ids for b in store.iterate(vectors=False, payloads=False)]))
    rng = np.random.default_rng(cfg.seed)
    stored = store.fetch(np.sort(rng.choice(ids, min(cfg.recall_sample, n), replace=False)))
    sets = {"stored": stored}
    if cross is not None and len(cross):
        sets[name] = np.ascontiguousarray(cross[: cfg.recall_sample], dtype=np.float32)
        m = max(1, min(len(stored), len(cross), cfg.recall_sample // 8))
        rng = np.random.default_rng(cfg.seed + 3)
        starts, targets = stored[rng.permutation(len(stored))[:m]], cross[rng.permutation(len(cross))[:m]]
        points = path_points(starts, targets, 8)
        if len(points):
            sets["path"] = points.astype(np.float32)
    return sets


def _measure(
    store: VectorStore, sets: dict[str, np.ndarray], cfg: IndexCfg, ladder: list[dict[str, Any]]
) -> dict[str, Any]:
    """The first setting of ``ladder`` whose recall reaches the target for every kind of query (the last
    one when none does), tried on `PROBE` queries per kind first; exact search is measured once."""
    k = cfg.recall_k
    sizes = {name: len(xq) for name, xq in sets.items()}
    everything = np.concatenate(list(sets.values()))
    d_all, i_all = exact_knn(
        everything, lambda: ((b.vectors, b.ids) for b in store.iterate(payloads=False)), k
    )
    truth, start = {}, 0
    for name, size in sizes.items():
        truth[name] = (d_all[start : start + size], i_all[start : start + size])
        start += size
    out: dict[str, Any] = {"recall_k": k, "recall_target": cfg.recall_target, "recall_queries": sizes}
    for setting in ladder or [{}]:
        store.set_search_params(setting)
        if ladder and setting is not ladder[-1]:
            probes = [
                _recall(store, xq[:PROBE], (t[0][:PROBE], t[1][:PROBE]), k)[0]
                for xq, t in zip(sets.values(), truth.values(), strict=True)
            ]
            if min(probes) < cfg.recall_target:
                continue
        measured = {name: _recall(store, sets[name], truth[name], k) for name in sets}
        recalls = {name: round(value, 4) for name, (value, _) in measured.items()}
        lowest = min(low for _, low in measured.values())
        out.update(
            search_params=dict(setting),
            recall_by_query=recalls,
            recall_at_k=min(recalls.values()),
            recall_lower_bound=round(lowest, 4),
        )
        if lowest >= cfg.recall_target:
            break
    return out


def _recall(
    store: VectorStore, xq: np.ndarray, truth: tuple[np.ndarray, np.ndarray], k: int
) -> tuple[float, float]:
    """Recall@k of the store's search on ``xq`` (as `faiss_index.recall_at_k`), and its lower confidence
    bound: `Z` standard errors of the mean over the queries below it. A setting is accepted on the bound,
    so that queries the tuning never saw reach the target too (a point estimate that only just passes
    falls short on about half of the fresh query sets)."""
    found_d, found_i = [], []
    for start in range(0, len(xq), 256):
        d, i = store.search(xq[start : start + 256], k)
        found_d.append(d)
        found_i.append(i)
    hits, truths = hits_per_query(
        np.concatenate(found_d), np.concatenate(found_i), truth[0], truth[1], exact_scores=True
    )
    judged = truths > 0
    if not judged.any():
        return 1.0, 1.0
    value = float(hits.sum() / truths.sum())
    per_query = hits[judged] / truths[judged]
    spread = float(per_query.std(ddof=1) / np.sqrt(len(per_query))) if len(per_query) > 1 else 0.0
    return value, value - Z * spread
