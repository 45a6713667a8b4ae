"""Stores: where an index's vectors live, behind one protocol (`base.VectorStore`: add with ids and
payload, search with an optional filter, fetch by id, count, iterate).

- ``faiss://INDEX`` counterclip's own index (FAISS + SQLite + shards), the default (`faiss_store`);
- ``lancedb://DIR/TABLE`` LanceDB, embedded, on local disk or object storage (`lancedb_store`);
- ``qdrant://HOST:PORT/COLLECTION`` a Qdrant server, ``qdrant+local://DIR/COLLECTION`` its embedded
  mode (`qdrant_store`).

An index directory that reads a vector store holds a side manifest, ``store.json`` (`side`): the model,
the store's address and fields, the calibration, the tuned ANN settings and a sample for `drift`
checks. ``counterclip build --store URI`` fills a store from a build (`publish`); ``counterclip attach``
registers an app's existing collection without copying it (`attach`). `open_index` opens either kind of
index directory for the engine (`store_index.StoreIndex` over a store). ``--where`` filters
(`filters.parse_where`) restrict candidates on every store.

The vector database clients are imported by their own modules only, on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from counterclip._lazy import lazy_exports

_LAZY: dict[str, str] = {
    "StoreIndex": "counterclip.index_builder.stores.store_index",
    "StoreURI": "counterclip.index_builder.stores.uri",
    "VectorStore": "counterclip.index_builder.stores.base",
    "Where": "counterclip.index_builder.stores.filters",
    "attach_collection": "counterclip.index_builder.stores.attach",
    "check_store": "counterclip.index_builder.stores.drift",
    "index_model_record": "counterclip.index_builder.stores.store_index",
    "is_store_index": "counterclip.index_builder.stores.side",
    "open_index": "counterclip.index_builder.stores.store_index",
    "open_store": "counterclip.index_builder.stores.uri",
    "parse_store_uri": "counterclip.index_builder.stores.uri",
    "parse_where": "counterclip.index_builder.stores.filters",
    "publish_to_store": "counterclip.index_builder.stores.publish",
}
__all__ = [
    "StoreIndex",
    "StoreURI",
    "VectorStore",
    "Where",
    "attach_collection",
    "check_store",
    "index_model_record",
    "is_store_index",
    "open_index",
    "open_store",
    "parse_store_uri",
    "parse_where",
    "publish_to_store",
]

if TYPE_CHECKING:
    from counterclip.index_builder.stores.attach import attach_collection
    from counterclip.index_builder.stores.base import VectorStore
    from counterclip.index_builder.stores.drift import check_store
    from counterclip.index_builder.stores.filters import Where, parse_where
    from counterclip.index_builder.stores.publish import publish_to_store
    from counterclip.index_builder.stores.side import is_store_index
    from counterclip.index_builder.stores.store_index import StoreIndex, index_model_record, open_index
    from counterclip.index_builder.stores.uri import StoreURI, open_store, parse_store_uri

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
