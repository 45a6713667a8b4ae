"""FAISS indexes within a memory budget (autofaiss-style): choose, train on a sample, fill, tune, open.

`write_faiss`, the one entry point of a build, runs the jobs in order, each in its module:

- `faiss_plan`: the most exact kind whose index fits the budget (`plan_index`: Flat, HNSW, fast-scan
  IVF-PQ with a re-ranking stage, IVF-SQ8 with on-disk lists), memory-mapped when opened;
- `faiss_build`: trained on a seeded sample and filled block by block, in memory or as IVF shards
  merged into on-disk inverted lists;
- `faiss_tune`: ``nprobe`` / ``efSearch`` / the re-ranking depth raised until recall@k reaches the
  target for every query kind (stored vectors, the other modality, points of the engine's path);
- here: the file written atomically (its on-disk lists under a new name), opened as its `FaissInfo`
  says (`open_faiss`).

Without a budget (and without the other collection's vectors) the kind follows the size alone
(`faiss_index.build_and_measure`) and the file is read into RAM, as before. The names of the three
modules are re-exported here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from counterclip.index_builder.checksums import Checksum
from counterclip.index_builder.config import IndexCfg
from counterclip.index_builder.faiss_build import TRAIN_PER_LIST, build_in_memory, build_on_disk
from counterclip.index_builder.faiss_index import (
    METRIC,
    Blocks,
    FaissInfo,
    _kind_of,
    build_and_measure,
    new_index,
    read_index,
    write_index_atomic,
)
from counterclip.index_builder.faiss_plan import (
    HAS_MMAP,
    Plan,
    collection_budget,
    exact_refine,
    format_size,
    nlist_fast_scan,
    nlist_for,
    parse_size,
    plan_index,
)
from counterclip.index_builder.faiss_tune import (
    CROSS_NAMES,
    DEPTH_LOSS,
    PATH_MAX_STEPS,
    PATH_STEP,
    PROBE_QUERIES,
    PROBE_Z,
    path_points,
    query_sets,
    tune,
)

LOG = logging.getLogger(__name__)

__all__ = [
    "CROSS_NAMES",
    "DEPTH_LOSS",
    "HAS_MMAP",
    "PATH_MAX_STEPS",
    "PATH_STEP",
    "PROBE_QUERIES",
    "PROBE_Z",
    "TRAIN_PER_LIST",
    "Plan",
    "build_in_memory",
    "build_on_disk",
    "collection_budget",
    "format_size",
    "iterate_arrays",
    "nlist_fast_scan",
    "nlist_for",
    "open_faiss",
    "parse_size",
    "path_points",
    "plan_index",
    "query_sets",
    "tune",
    "write_faiss",
]


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
    old_ivfdata = sorted(path.parent.glob(f"{path.name}.*.ivfdata"))
    plan, index, ivfdata = _build(blocks, n, d, plan, cfg, path)
    built = time.perf_counter()
    base_kind = _kind_of(plan.factory)
    queries = query_sets(blocks, n, cross, kind, cfg) if n else {}
    params, by_query = tune(index, base_kind, plan.factory, queries, blocks, cfg)
    if plan.factory.endswith(",Refine(SQ8)") and _worst(by_query, cfg) < cfg.recall_target:
        # 8-bit codes rank near-ties approximately; on some collections that caps recall below the target
        # at any depth: then exact re-ranking from the vectors on disk, past the budget, as recall comes first
        plan = exact_refine(plan, n, d, _worst(by_query, cfg), cfg)
        LOG.warning("%s: %s", path.name, plan.reason)
        index = build_in_memory(blocks, n, d, plan, cfg)
        params, by_query = tune(index, base_kind, plan.factory, queries, blocks, cfg)
    LOG.info(
        "%s: built (train + add) in %.1f s, tuned in %.1f s",
        path.name,
        built - started,
        time.perf_counter() - built,
    )
    _write(index, path, old_ivfdata, ivfdata)
    files = [path.name] + ([ivfdata] if ivfdata else [])
    info = _info(plan, n, cfg, params, by_query, files, time.perf_counter() - started)
    _log_written(path, plan, params, by_query, info, cfg)
    return info


def _build(
    blocks: Blocks, n: int, d: int, plan: Plan, cfg: IndexCfg, path: Path
) -> tuple[Plan, faiss.Index, str | None]:
    """Train and fill the planned index: ``(plan, index, on-disk lists file or None)``."""
    if n == 0:
        plan = Plan("flat", "Flat", "IDMap", plan.io, 0, 0, plan.budget, "empty collection")
        return plan, faiss.index_factory(d, plan.built, METRIC), None
    if plan.io == "ondisk":
        chunk_rows = max(10_000, int((plan.budget or 10**9) // max(4 * d, 1) // 2))
        index, ivfdata = build_on_disk(blocks, n, d, plan, cfg, path, chunk_rows)
        return plan, index, ivfdata
    return plan, build_in_memory(blocks, n, d, plan, cfg), None


def _write(index: faiss.Index, path: Path, old_ivfdata: list[Path], ivfdata: str | None) -> None:
    """Write the index file atomically, then remove on-disk lists of earlier builds of the same file."""
    write_index_atomic(index, path)
    for old in old_ivfdata:  # readers that mapped it keep the inode; new readers open the new name
        if old.name != ivfdata:
            old.unlink(missing_ok=True)


def _info(
    plan: Plan,
    n: int,
    cfg: IndexCfg,
    params: dict[str, int],
    by_query: dict[str, dict[str, Any]],
    files: list[str],
    seconds: float,
) -> FaissInfo:
    """The `FaissInfo` of a written index: its kind, tuned parameters, recall per query kind, memory plan."""
    stored = by_query.get("stored", {})
    return FaissInfo(
        kind=_kind_of(plan.factory),
        factory=plan.factory,
        ntotal=n,
        search_params=params,
        recall_at_k=stored.get(f"recall_at_{cfg.recall_k}") if n else None,
        recall_k=cfg.recall_k,
        recall_queries=int(stored.get("queries", 0)),
        seconds=seconds,
        io=plan.io,
        recall_by_query=by_query,
        memory={**plan.to_dict(), "files": files},
    )


def _log_written(
    path: Path,
    plan: Plan,
    params: dict[str, int],
    by_query: dict[str, dict[str, Any]],
    info: FaissInfo,
    cfg: IndexCfg,
) -> None:
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


def _worst(by_query: dict[str, dict[str, Any]], cfg: IndexCfg) -> float:
    """The lowest recall@k over the query kinds measured by `tune`."""
    return min((v[f"recall_at_{cfg.recall_k}"] for v in by_query.values()), default=1.0)


def open_faiss(path: Path, info: FaissInfo, expected: Checksum | None = None) -> faiss.Index:
    """Open a FAISS file the way its `FaissInfo` says: read into RAM, memory-mapped (``IO_FLAG_MMAP_IFC``:
    pages are read when a search touches them), or with on-disk inverted lists opened read-only from the
    same directory (`faiss_index.read_index`, after checking ``expected`` when given)."""
    return read_index(path, expected, io=info.io)


def iterate_arrays(vectors: np.ndarray, ids: np.ndarray, block: int = 65536) -> Blocks:
    """`Blocks` over arrays in memory (tests, benchmarks)."""

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(ids), block):
            yield vectors[start : start + block], ids[start : start + block]

    return blocks
