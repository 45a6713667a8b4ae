"""Index builder: image folder -> on-disk index (FAISS + SQLite + embedding shards), incremental and resumable.

Public API::

    from counterclip.index_builder import build_index, update_index, Index, BuildSummary

    summary = build_index("photos/", "photos.idx", model="bundled:shapes")
    with Index.open("photos.idx") as idx:
        D, I = idx.images.search(query_vectors, 10)

The layout of an index directory, one generation after another (see `manifest`): ``manifest.json``
(the current generation's manifest, switched atomically), ``manifest-G.json`` (generation G's, locked
by its readers), ``items-G.sqlite`` (one row per image and caption), ``embeddings/*.npy`` (the raw
vectors, the source of truth), ``images-G.faiss`` and ``captions-G.faiss`` (derived), ``.lock`` (the
writer lock). Every data file has a checksum in the manifest: `check_index` verifies them all.

A build or an update (`builder`) makes generation G+1 beside G in stages, each a module with one job,
sharing one `build_state.BuildState`::

    build_base       G located, its files verified against their checksums
        |
    build_plan       checks before changes: folder, model, recipe, caption files, FAISS kind, decode
        |            options, encoder (build_encoder); nothing is written before this passes
    build_work       items-(G+1).sqlite copied from G's (or resumed), debris removed, repairs applied
        |
    build_scan       scan the folder, diff it with the rows: pending, changed, removed
        |
    build_embed      decode and embed the pending images -> write shards (pipeline; the unit of resume)
        |
    build_captions   sidecars, captions file, vocabulary; new texts embedded once
        |
    build_compact    shards holding removed rows (and small ones) rewritten
        |
    build_faiss      each collection's FAISS index from its shards (budget: plan, build, tune, write)
        |
    build_finalize   calibration, checksums, manifest-(G+1).json and the switch of manifest.json
                     (then build_work retires the generations no reader holds)

An import of clip-retrieval output (`interop`) writes its rows, then publishes through build_faiss and
build_finalize; the distributed embedders (`distributed`: shard sets, Ray Data) are build_embed's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from counterclip._lazy import lazy_exports

# public name -> the module that defines it; imported on first use (PEP 562), so reading a manifest or
# opening an `Index` does not import torch (the builder's pipeline does)
_LAZY: dict[str, str] = {
    "BuildSummary": "counterclip.index_builder.builder",
    "CheckReport": "counterclip.index_builder.integrity",
    "DecodeError": "counterclip.index_builder.decode",
    "Index": "counterclip.index_builder.index",
    "IndexCfg": "counterclip.index_builder.config",
    "add_index_config": "counterclip.index_builder.config",
    "build_index": "counterclip.index_builder.builder",
    "check_index": "counterclip.index_builder.integrity",
    "decode_query": "counterclip.index_builder.decode",
    "list_index_configs": "counterclip.index_builder.config",
    "load_image": "counterclip.index_builder.decode",
    "load_index_config": "counterclip.index_builder.config",
    "update_index": "counterclip.index_builder.builder",
    "index_model_record": "counterclip.index_builder.stores.store_index",
    "open_index": "counterclip.index_builder.stores.store_index",
}

__all__ = [
    "BuildSummary",
    "CheckReport",
    "DecodeError",
    "Index",
    "IndexCfg",
    "add_index_config",
    "build_index",
    "check_index",
    "decode_query",
    "list_index_configs",
    "load_image",
    "load_index_config",
    "update_index",
    "index_model_record",
    "open_index",
]

if TYPE_CHECKING:  # static analysers and IDEs see the real imports
    from counterclip.index_builder.builder import BuildSummary, build_index, update_index
    from counterclip.index_builder.config import (
        IndexCfg,
        add_index_config,
        list_index_configs,
        load_index_config,
    )
    from counterclip.index_builder.decode import DecodeError, decode_query, load_image
    from counterclip.index_builder.index import Index
    from counterclip.index_builder.integrity import CheckReport, check_index
    from counterclip.index_builder.stores.store_index import index_model_record, open_index


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
