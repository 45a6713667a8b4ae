"""A store's approximate search, chosen by size and tuned to the recall target, measured like FAISS's.

Below `ANN_MIN` vectors (FAISS's own exact limit, `IndexCfg.exact_max`) every store searches exactly.
Above it LanceDB gets an IVF-PQ index (about sqrt(n) lists, ``d/8`` sub-vectors of 8 bits) whose
``nprobes`` and ``refine_factor`` (re-ranking on the raw vectors) are raised until recall@k reaches the
target; a Qdrant server's HNSW graph gets its ``hnsw_ef`` raised the same way (Qdrant's embedded mode is
exact). Recall@k is measured as `faiss_index.recall_at_k` does for FAISS: ``recall_sample`` stored
vectors as queries, the exact top-k over all vectors as truth; a setting is tried on `PROBE` queries
first and accepted on all of them. The result (kind, settings, recall) is recorded in ``store.json``.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np

from counterclip.index_builder.config import IndexCfg
from counterclip.index_builder.faiss_index import exact_knn, recall_at_k
from counterclip.index_builder.stores.base import VectorStore

LOG = logging.getLogger(__name__)
ANN_MIN = IndexCfg().exact_max  # vectors from which a store searches approximately
PROBE = 100  # queries a setting is first tried on
LANCE_LADDER = [(p, r) for p in (8, 16, 32, 64, 128, 256) for r in (1, 4, 10, 30)]  # (nprobes, refine_factor)
HNSW_EF = (16, 32, 64, 128, 256, 512, 1024)


def sub_vectors(dim: int) -> int:
    """PQ sub-vectors for ``dim``: the largest divisor of ``dim`` at most ``dim / 8`` (8 dimensions each)."""
    return max([s for s in range(1, max(1, dim // 8) + 1) if dim % s == 0])


def tune(
    store: VectorStore, cfg: IndexCfg | None = None, ann_min: int = ANN_MIN, build: bool = True
) -> dict[str, Any]:
    """Choose, build and tune the store's search (see the module docstring); the record for ``store.json``.

    Args:
        store: a filled store.
        cfg: recall_k, recall_sample, recall_target and seed. Default: the ``default`` recipe's.
        ann_min: vectors from which the search is approximate. Default: `ANN_MIN`.
        build: make the ANN index (False for an attached collection, which is never written: its own
            index, if any, is tuned and measured).
    """
    cfg = cfg or IndexCfg()
    started, n = time.perf_counter(), store.count()
    ladder: list[dict[str, Any]] = []
    record: dict[str, Any] = {"kind": "exact", "params": {}, "search_params": {}}
    if store.kind == "lancedb":
        if n >= ann_min and build:
            dim = int(store.dim() or 0)
            partitions = max(1, min(int(math.sqrt(n)), n // 256))
            store.build_ann(partitions, sub_vectors(dim))  # type: ignore[attr-defined]
            record["params"] = {"partitions": partitions, "sub_vectors": sub_vectors(dim)}
        if store.has_ann():  # type: ignore[attr-defined]
            record["kind"] = "ivf_pq"
            ladder = [{"nprobes": p, "refine_factor": r} for p, r in LANCE_LADDER]
    elif n >= ann_min and store.kind == "qdrant" and not getattr(store, "local", True):
        record["kind"] = "hnsw"
        ladder = [{"hnsw_ef": ef} for ef in HNSW_EF]
    record.update(_measure(store, n, cfg, ladder))
    record["seconds"] = round(time.perf_counter() - started, 2)
    LOG.info("%s: %s search, recall@%d %.3f", store.uri, record["kind"], cfg.recall_k, record["recall_at_k"])
    return record


def _measure(store: VectorStore, n: int, cfg: IndexCfg, ladder: list[dict[str, Any]]) -> dict[str, Any]:
    """The first setting of ``ladder`` that reaches the target (the last one when none does), with its
    recall on all the sampled queries; exact search is measured once."""
    k = cfg.recall_k
    out = {"recall_k": k, "recall_target": cfg.recall_target, "recall_queries": 0, "recall_at_k": 1.0}
    if n == 0:
        return out
    ids = np.sort(np.concatenate([b.ids for b in store.iterate(vectors=False, payloads=False)]))
    rng = np.random.default_rng(cfg.seed)
    chosen = np.sort(rng.choice(ids, min(cfg.recall_sample, len(ids)), replace=False))
    xq = store.fetch(chosen)
    truth = exact_knn(xq, lambda: ((b.vectors, b.ids) for b in store.iterate(payloads=False)), k)
    out["recall_queries"] = len(xq)
    for setting in ladder or [{}]:
        store.set_search_params(setting)
        if ladder and len(xq) > PROBE:
            probe = _recall(store, xq[:PROBE], (truth[0][:PROBE], truth[1][:PROBE]), k)
            if probe < cfg.recall_target and setting is not ladder[-1]:
                continue
        recall = _recall(store, xq, truth, k)
        out.update(search_params=dict(setting), recall_at_k=round(recall, 4))
        if recall >= cfg.recall_target:
            break
    return out


def _recall(store: VectorStore, xq: np.ndarray, truth: tuple[np.ndarray, np.ndarray], k: int) -> float:
    found_d, found_i = [], []
    for start in range(0, len(xq), 256):
        d, i = store.search(xq[start : start + 256], k)
        found_d.append(d)
        found_i.append(i)
    return recall_at_k(
        np.concatenate(found_d), np.concatenate(found_i), truth[0], truth[1], exact_scores=True
    )
