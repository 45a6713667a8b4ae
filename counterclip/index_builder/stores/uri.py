"""`open_store`: a store address opened as its `base.VectorStore`; the vector database clients are imported
here on first use only, never on the default path (addresses: `address`)."""

from __future__ import annotations

import os
from pathlib import Path

from counterclip.errors import InputError
from counterclip.index_builder.stores.address import API_KEY_ENV, StoreURI, parse_store_uri
from counterclip.index_builder.stores.base import VectorStore

__all__ = ["StoreURI", "open_store", "parse_store_uri"]


def open_store(uri: str | StoreURI, vector_field: str = "vector", id_field: str = "id") -> VectorStore:
    """Open the store at ``uri`` (its collection may not exist yet: `VectorStore.exists`).

    Args:
        uri: a store address or a parsed `StoreURI`.
        vector_field: the field that holds the vectors (an attached collection's own name).
        id_field: LanceDB only: the column that holds the ids.

    Raises:
        InputError: a malformed address, or the store's extra is not installed.
        StoreUnavailableError: the server does not answer (one line naming it and what to do).
    """
    parsed = uri if isinstance(uri, StoreURI) else parse_store_uri(uri)
    if parsed.kind == "faiss":
        from counterclip.index_builder.stores.faiss_store import FaissStore

        return FaissStore.open(Path(parsed.location))
    if parsed.kind == "lancedb":
        _require("lancedb", "lancedb")
        from counterclip.index_builder.stores.lancedb_store import LanceStore

        return LanceStore(parsed, vector_field, id_field)
    _require("qdrant_client", "qdrant")
    from counterclip.index_builder.stores.qdrant_store import QdrantStore

    return QdrantStore(parsed, vector_field, os.environ.get(API_KEY_ENV) or None)


def _require(module: str, extra: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise InputError(
            f"the {extra} store needs the extra: pip install 'counterclip[{extra}]' ({module} is not installed)"
        )
