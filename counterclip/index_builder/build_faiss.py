"""Build stage 8, FAISS: each collection's index built from its shards into ``{kind}-(G+1).faiss``.

The kind, memory-mapping and on-disk lists follow the recipe and the memory budget (`budget.write_faiss`),
and recall@k is measured. A collection whose shards, ids and FAISS settings are those of the last build
keeps its file (shared between generations, after checking its checksum). The FAISS file and its on-disk
lists are recorded in the items file (``faiss_<kind>``: the state they were built from, their checksums),
which `build_finalize` lists in the manifest. An import builds its indexes here too.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator

import numpy as np

from counterclip.index_builder.budget import write_faiss
from counterclip.index_builder.build_plan import BuildPlan
from counterclip.index_builder.build_state import BuildState
from counterclip.index_builder.checksums import Checksum, checksum_file, mismatch
from counterclip.index_builder.faiss_index import FaissInfo
from counterclip.index_builder.manifest import KINDS, faiss_name
from counterclip.index_builder.shards import iterate_shards, read_ids
from counterclip.index_builder.store import Store

LOG = logging.getLogger(__name__)
FAISS_CFG_KEYS = (  # the config fields a FAISS index depends on (others never force a rebuild)
    "exact_max",
    "hnsw_max",
    "hnsw_m",
    "hnsw_ef_construction",
    "ivf_codec",
    "recall_k",
    "recall_sample",
    "recall_target",
    "seed",
    "memory_budget",
)


def faiss_indexes(
    state: BuildState, plan: BuildPlan, store: Store, built_from: str | None = None
) -> dict[str, FaissInfo]:
    """The FAISS index of every collection (the images of ``plan.index_kind``, the captions by size).

    ``built_from``: the state recorded for the files (an import: ``"imported"``); None: a digest of the
    shards, ids and FAISS settings, and a collection whose digest did not change keeps its file.
    """
    with state.timed("faiss"):
        return {
            kind: faiss_index(
                state, plan, store, kind, plan.index_kind if kind == "images" else "auto", built_from
            )
            for kind in KINDS
        }


def faiss_index(
    state: BuildState, plan: BuildPlan, store: Store, kind: str, index_kind: str, built_from: str | None
) -> FaissInfo:
    """Build (or keep) the FAISS file of one collection and record it in the items file."""
    numbers = sorted(store.referenced_shards(kind))
    sums = store.file_checksums()
    digest = built_from or _digest(state, plan, kind, index_kind, numbers, sums)
    previous = store.get_meta(f"faiss_{kind}") or {}
    name = previous.get("file")
    if built_from is None and previous.get("state") == digest and name and previous.get("checksum"):
        path = state.index_dir / name
        if name in state.verified or mismatch(path, Checksum.from_dict(previous["checksum"])) is None:
            LOG.info("%s: FAISS index up to date (%s)", kind, name)
            return FaissInfo.from_dict(previous["info"])
    task = state.progress.task(f"FAISS index ({kind})", None, "step")

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return iterate_shards(state.emb_dir, kind, numbers, checksums=sums)

    other = "captions" if kind == "images" else "images"
    other_numbers = sorted(store.referenced_shards(other))
    cross = (
        lambda: iterate_shards(state.emb_dir, other, other_numbers, checksums=sums),
        store.count(other, "indexed"),
    )
    name = faiss_name(kind, state.work_gen)
    n = store.count(kind, "indexed")
    info = write_faiss(blocks, n, plan.model.dim, plan.cfg, index_kind, state.index_dir / name, kind, cross)
    # the on-disk inverted lists (budget.py) are files of this generation too: listed and checksummed
    extra = {f: checksum_file(state.index_dir / f).to_dict() for f in info.memory.get("files", [])[1:]}
    record = {
        "state": digest,
        "info": info.to_dict(),
        "file": name,
        "checksum": checksum_file(state.index_dir / name).to_dict(),
        "extra_files": extra,
    }
    with store.transaction():
        store.set_meta(**{f"faiss_{kind}": record})
    state.progress.done(task)
    return info


def _digest(
    state: BuildState,
    plan: BuildPlan,
    kind: str,
    index_kind: str,
    numbers: list[int],
    sums: dict[str, Checksum],
) -> str:
    """What a collection's FAISS file is built from: its kind, FAISS settings, shards and their ids."""
    digest = hashlib.sha256()
    faiss_cfg = {k: v for k, v in plan.cfg.to_dict().items() if k in FAISS_CFG_KEYS}
    digest.update(json.dumps([index_kind, faiss_cfg, numbers], sort_keys=True).encode())
    for number in numbers:
        digest.update(read_ids(state.emb_dir, kind, number, sums).tobytes())
    return digest.hexdigest()
