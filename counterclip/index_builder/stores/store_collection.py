"""The two collections of a store-backed index (`store_index.StoreIndex.images` / ``.captions``): the
engine's collection calls (ids, count, vectors, search, meta) answered by a `base.VectorStore`, with
each item's metadata read from its payload.

`restricted` is the ``--where`` view of any collection, counterclip's own or a store's: searches see only
the items that pass the filter; vectors and metadata by id are unchanged.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from counterclip.errors import InputError
from counterclip.index_builder.stores.base import VectorStore, as_ids
from counterclip.index_builder.stores.filters import Where, parse_where
from counterclip.index_builder.stores.side import Fields

URL_PREFIXES = ("http://", "https://", "s3://", "gs://")
PAYLOAD_SECONDS = 5.0  # a payload read is reused this long (an app's edit to it shows after at most this)
RECENT_MAX = 50_000  # payloads kept at most
SHOWN_MAX = 100  # a search for at most this many results reads their payloads with it


class StoreCollection:
    """One collection over a store (or an empty one: ``store`` None, an attached app's captions).

    Attributes:
        name: ``images`` or ``captions``.
        dim: the vectors' width.
        store: the `VectorStore` (None: no items).
    """

    def __init__(
        self, name: str, store: VectorStore | None, dim: int, fields: Fields, root: Path | None
    ) -> None:
        self.name, self.store, self.dim = name, store, dim
        self._fields, self._root = fields, root
        self._ids: np.ndarray | None = None
        self._lock = threading.Lock()
        self._recent: dict[int, tuple[float, dict[str, Any]]] = {}  # id -> (when read, payload)
        self.images_store: VectorStore | None = None  # captions: where the images' own captions are

    @property
    def ids(self) -> np.ndarray:
        """All ids, ascending, int64 (read once from the store)."""
        with self._lock:
            if self._ids is None:
                parts = (
                    [b.ids for b in self.store.iterate(vectors=False, payloads=False)] if self.store else []
                )
                ids = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
                ids.setflags(write=False)
                self._ids = ids
            return self._ids

    @property
    def count(self) -> int:
        """Number of items."""
        return self.store.count() if self.store is not None else 0

    def vectors(self, ids: Any) -> np.ndarray:
        """Stored embeddings ``(n, d)`` float32, unit rows; `KeyError` for an unknown id."""
        ids = as_ids(ids)
        if self.store is None:
            if len(ids):
                raise KeyError(f"unknown {self.name[:-1]} id(s) {ids[:10].tolist()}")
            return np.zeros((0, self.dim), np.float32)
        return self.store.fetch(ids)

    def search(self, xq: np.ndarray, k: int, where: Where | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items by inner product (``D (nq, k)``, ``I (nq, k)``; -inf / -1 padding)."""
        xq = np.asarray(xq, dtype=np.float32)
        if xq.ndim != 2 or xq.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (nq, {self.dim}), got {xq.shape}")
        if where is not None and self.name != "images":
            raise InputError("--where restricts images; the captions have no fields to filter on")
        if self.store is None:
            return np.full((len(xq), k), -np.inf, np.float32), np.full((len(xq), k), -1, np.int64)
        dist, labels = self.store.search(xq, k, where)
        if len(xq) == 1 and k <= SHOWN_MAX:  # a user's search: its caller shows the hits, read them at once
            self._payloads(labels[0][labels[0] >= 0])
        return dist, labels

    def meta(self, ids: Any) -> list[dict[str, Any]]:
        """Per id, in order, the same keys as counterclip's own collections (images: id, path, abs_path,
        size, mtime, sha256, width, height, has_file, url; captions: id, text, source, image_id,
        image_ids). `KeyError` for an unknown id."""
        ids = as_ids(ids)
        payloads = self._payloads(ids)
        out = []
        for item_id, payload in zip(ids.tolist(), payloads, strict=True):
            if payload is None:
                raise KeyError(f"unknown {self.name[:-1]} id {item_id}")
            out.append(self._image(item_id, payload) if self.name == "images" else _caption(item_id, payload))
        return out

    def _payloads(self, ids: np.ndarray) -> list[dict[str, Any] | None]:
        """The payloads of ``ids``; one read within `PAYLOAD_SECONDS` serves them all (a query reads an
        answer's payload several times: its copies, its re-encoding, its item)."""
        if self.store is None:
            return [None] * len(ids)
        now = time.monotonic()
        with self._lock:
            found = {
                i: e[1] for i in ids.tolist() if (e := self._recent.get(i)) and now - e[0] < PAYLOAD_SECONDS
            }
        missing = np.array(sorted(set(ids.tolist()) - set(found)), dtype=np.int64)
        if len(missing):
            read = dict(zip(missing.tolist(), self.store.payloads(missing), strict=True))
            found.update(read)
            with self._lock:
                if len(self._recent) > RECENT_MAX:
                    self._recent.clear()
                self._recent.update({i: (now, p) for i, p in read.items() if p is not None})
        return [found.get(i) for i in ids.tolist()]

    def _image(self, item_id: int, payload: dict[str, Any]) -> dict[str, Any]:
        raw = payload.get(self._fields.path)
        path = str(raw) if raw is not None else ""
        url = payload.get("url") or (path if path.startswith(URL_PREFIXES) else None)
        has_file = bool(payload.get("has_file", True)) and bool(path) and url != path
        abs_path = None
        if has_file:
            abs_path = path if os.path.isabs(path) or self._root is None else str(self._root / path)
        size, mtime = payload.get("size"), payload.get("mtime")
        if has_file and size is None:  # an app's payload records none: the file as it is now
            size, mtime = _stat(abs_path)
        return {
            "id": item_id,
            "path": path,
            "abs_path": abs_path,
            "size": size,
            "mtime": mtime,
            "sha256": payload.get("sha256"),
            "width": payload.get("width"),
            "height": payload.get("height"),
            "has_file": has_file,
            "url": url,
        }

    def texts_of_images(self, image_ids: Any) -> dict[int, list[str]]:
        """The captions written for each image (its payload's caption field); an image with none is absent."""
        field = self._fields.caption
        if self.images_store is None or field is None:
            return {}
        wanted = np.unique(as_ids(image_ids))
        found: dict[int, list[str]] = {}
        for item_id, payload in zip(wanted.tolist(), self.images_store.payloads(wanted), strict=True):
            texts = (payload or {}).get(field)
            texts = [texts] if isinstance(texts, str) else list(texts or [])
            if texts:
                found[item_id] = [str(t) for t in texts]
        return found

    def close(self) -> None:
        """Nothing held beyond the store (closed by the index)."""


def _caption(item_id: int, payload: dict[str, Any]) -> dict[str, Any]:
    image_ids = [int(i) for i in payload.get("image_ids") or []]
    return {
        "id": item_id,
        "text": payload.get("text", ""),
        "source": payload.get("source", "vocab"),
        "image_id": payload.get("image_id"),
        "image_ids": sorted(set(image_ids)),
    }


def _stat(path: str | None) -> tuple[int | None, float | None]:
    try:
        st = os.stat(path) if path else None
    except OSError:
        return None, None
    return (st.st_size, st.st_mtime_ns / 1e9) if st is not None else (None, None)


class Restricted:
    """A collection seen through a ``--where`` filter: `search` finds only the items that pass."""

    def __init__(self, collection: Any, where: Where) -> None:
        self._collection, self.where = collection, where
        self.name = collection.name

    def __getattr__(self, attr: str) -> Any:  # ids, count, vectors, meta, texts_of_images ...
        return getattr(self._collection, attr)

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._collection.search(xq, k, where=self.where)


def restricted(collection: Any, where: str | Where | None) -> Any:
    """``collection`` itself without a filter, else its `Restricted` view (the filter parsed once)."""
    if where is None or (isinstance(where, str) and not where.strip()):
        return collection
    return Restricted(collection, parse_where(where) if isinstance(where, str) else where)
