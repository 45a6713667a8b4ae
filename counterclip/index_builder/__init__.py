"""Index builder: image folder -> on-disk index (FAISS + SQLite + embedding shards), incremental and resumable.

Public API::

    from counterclip.index_builder import build_index, update_index, Index, BuildSummary

    summary = build_index("photos/", "photos.idx", model="bundled:shapes")
    with Index.open("photos.idx") as idx:
        D, I = idx.search_images(query_vectors, k=10)

The layout of an index directory: ``manifest.json`` (written last, atomically), ``items.sqlite`` (one
row per image and caption), ``embeddings/*.npy`` (the raw vectors, the source of truth),
``images.faiss`` and ``captions.faiss`` (derived), ``.lock`` (the writer lock).
"""

from counterclip.index_builder.builder import BuildSummary, build_index, update_index
from counterclip.index_builder.config import IndexCfg, add_index_config, list_index_configs, load_index_config
from counterclip.index_builder.decode import DecodeError, load_image
from counterclip.index_builder.index import Index

__all__ = [
    "BuildSummary",
    "DecodeError",
    "Index",
    "IndexCfg",
    "add_index_config",
    "build_index",
    "list_index_configs",
    "load_image",
    "load_index_config",
    "update_index",
]
