"""counterclip's own index as a store (``faiss://INDEX_DIR``): FAISS + SQLite + shards, read through the
store protocol (the builder writes it; `publish` copies it into another store, the benchmark and the
tests compare stores against it).

The payload of an item is what a built vector store carries (`image_payload`, `caption_payload`), so a
filter or a meta lookup means the same on every store.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from counterclip.errors import InputError
from counterclip.index_builder.index import Index
from counterclip.index_builder.stores.base import StoreBatch, as_ids
from counterclip.index_builder.stores.filters import Where
from counterclip.index_builder.stores.sqlite_filter import allowed_ids


def image_payload(meta: dict[str, Any], captions: list[str]) -> dict[str, Any]:
    """The payload of an image in a built store: its index metadata, its folder and its own captions."""
    path = meta["path"]
    return {
        "path": path,
        "folder": os.path.dirname(path) if meta.get("has_file", True) else "",
        "sha256": meta.get("sha256"),
        "size": meta.get("size"),
        "mtime": meta.get("mtime"),
        "width": meta.get("width"),
        "height": meta.get("height"),
        "captions": list(captions),
        "url": meta.get("url"),
        "has_file": bool(meta.get("has_file", True)),
    }


def caption_payload(meta: dict[str, Any]) -> dict[str, Any]:
    """The payload of a caption in a built store."""
    return {
        "text": meta["text"],
        "source": meta["source"],
        "image_id": meta.get("image_id"),
        "image_ids": list(meta.get("image_ids") or []),
    }


class FaissStore:
    """One collection of an opened `Index` as a read-only `base.VectorStore`."""

    kind = "faiss"

    def __init__(self, index: Index, collection: str = "images", owns: bool = False) -> None:
        self.index, self.name, self._owns = index, collection, owns
        self.collection = index.images if collection == "images" else index.captions
        self.uri = f"faiss://{index.path}" + ("" if collection == "images" else "#captions")

    @classmethod
    def open(cls, index_dir: Path, collection: str = "images") -> FaissStore:
        """Open the index at ``index_dir`` (closed with the store)."""
        return cls(Index.open(index_dir), collection, owns=True)

    def exists(self) -> bool:
        return True

    def dim(self) -> int | None:
        return self.index.dim

    def create(self, dim: int) -> None:
        self._read_only()

    def add(self, ids: np.ndarray, vectors: np.ndarray, payloads: list[dict[str, Any]]) -> None:
        self._read_only()

    def delete(self, ids: np.ndarray) -> None:
        self._read_only()

    def _read_only(self) -> None:
        raise InputError(f"store {self.uri}: counterclip's own index is written by `counterclip build`")

    def search(self, xq: np.ndarray, k: int, where: Where | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self.collection.search(xq, k, where)

    def fetch(self, ids: np.ndarray) -> np.ndarray:
        return self.collection.vectors(as_ids(ids))

    def payloads(self, ids: np.ndarray) -> list[dict[str, Any] | None]:
        ids = as_ids(ids)
        known = ids[np.isin(ids, self.collection.ids)]
        found = dict(zip(known.tolist(), self._payloads(known), strict=True))
        return [found.get(int(i)) for i in ids]

    def _payloads(self, ids: np.ndarray) -> list[dict[str, Any]]:
        metas = self.collection.meta(ids)
        if self.name == "captions":
            return [caption_payload(m) for m in metas]
        texts = self.index.captions.texts_of_images(ids)
        return [image_payload(m, texts.get(int(m["id"]), [])) for m in metas]

    def _ids(self, where: Where | None) -> np.ndarray:
        if where is None:
            return self.collection.ids
        if self.name != "images":
            raise InputError("--where restricts images; the captions have no fields to filter on")
        return allowed_ids(where, self.index._meta.query)

    def count(self, where: Where | None = None) -> int:
        return len(self._ids(where))

    def iterate(
        self, batch: int = 10_000, vectors: bool = True, payloads: bool = True, where: Where | None = None
    ) -> Iterator[StoreBatch]:
        ids = self._ids(where)
        for start in range(0, len(ids), batch):
            part = ids[start : start + batch]
            yield StoreBatch(
                part,
                self.collection.vectors(part) if vectors else None,
                self._payloads(part) if payloads else [{}] * len(part),
            )

    def set_search_params(self, params: dict[str, Any]) -> None:
        """The index's own tuned parameters (in its manifest) are used; nothing to set."""

    def close(self) -> None:
        if self._owns:
            self.index.close()
