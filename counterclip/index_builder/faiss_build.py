"""Training and filling a planned FAISS index (`faiss_plan.Plan`) from blocks of vectors.

In memory (`build_in_memory`): trained on a seeded sample, filled block by block, so memory is one block
plus the index. On disk (`build_on_disk`): IVF shards of a bounded number of vectors, merged into on-disk
inverted lists (`faiss.contrib.ondisk.merge_ondisk`) beside the index file, under a name new for every
build so a reader of an older file is never disturbed.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import time
from pathlib import Path

import faiss
import numpy as np

from counterclip._fileio import TMP_SUFFIX, fsync_dir
from counterclip.errors import InputError
from counterclip.index_builder.config import IndexCfg
from counterclip.index_builder.faiss_index import METRIC, Blocks, _sample_rows
from counterclip.index_builder.faiss_plan import Plan

# one logger for the budgeted FAISS build (budget.py; scripts/bench_scale.py follows it)
LOG = logging.getLogger("counterclip.index_builder.budget")
TRAIN_PER_LIST = 64  # k-means points per list: FAISS warns below 39; more costs linearly, buys little


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
