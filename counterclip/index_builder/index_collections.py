"""The two collections of an opened index, images and captions: ids, stored vectors, FAISS search and
metadata of one generation (`Index.images`, `Index.captions`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from counterclip.errors import InputError
from counterclip.index_builder.checksums import Checksum
from counterclip.index_builder.faiss_index import (
    FaissInfo,
    check_search_result,
    make_search_params,
    read_index,
    search,
)
from counterclip.index_builder.manifest import EMBEDDINGS_DIR, Manifest, damaged_error
from counterclip.index_builder.shards import ShardReader
from counterclip.index_builder.sources import has_sources, item_sources
from counterclip.index_builder.store import SqliteMetadataProvider
from counterclip.index_builder.stores.filters import Where
from counterclip.index_builder.stores.sqlite_filter import allowed_ids, with_selector

LOG = logging.getLogger(__name__)


def shard_checksums(manifest: Manifest, kind: str) -> dict[str, Checksum]:
    """The recorded checksums of the vector shards of ``kind`` in this generation (by file name)."""
    prefix = f"{EMBEDDINGS_DIR}/{kind}-"
    return {
        name: Checksum.from_dict(entry)
        for name, entry in manifest.files.items()
        if name.startswith(prefix) and not name.endswith(".ids.npy")
    }


class Collection:
    """One collection of an index, the images or the captions: ids, stored vectors, search, metadata.

    The engine moves one side of a pair against one collection (`Index.images` or `Index.captions`).

    Attributes:
        name: ``images`` or ``captions``.
        ids: all ids, ascending, int64 (read-only).
        info: the FAISS index's kind, parameters and measured recall.
    """

    name: str

    def __init__(self, index_dir: Path, manifest: Manifest, meta: SqliteMetadataProvider) -> None:
        rows = meta.query(f"SELECT id, shard, row FROM {self.name} WHERE status = 'indexed' ORDER BY id")
        table = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
        self.ids = np.ascontiguousarray(table[:, 0])
        self.ids.setflags(write=False)
        self._shards = np.ascontiguousarray(table[:, 1])
        self._rows = np.ascontiguousarray(table[:, 2])
        self._reader = ShardReader(
            index_dir / EMBEDDINGS_DIR, self.name, shard_checksums(manifest, self.name)
        )
        self._index_dir = index_dir
        self._faiss_name = manifest.faiss_file(self.name)
        self.info = FaissInfo.from_dict(manifest.faiss[self.name])
        # in RAM, memory-mapped or with on-disk lists, as the budget chose (budget.py), checksum first
        self._faiss = read_index(
            index_dir / self._faiss_name, manifest.checksum(self._faiss_name), io=self.info.io
        )
        self._meta = meta
        self._params: dict[int, Any] = {}  # FAISS search parameters by k (`make_search_params`)
        self._selectors: dict[str, Any] = {}  # --where text -> its FAISS IDSelector (`_selector`)
        self.dim = dim = manifest.model.embed_dim
        if self._faiss.ntotal != len(self.ids) or self._faiss.d != dim:
            raise damaged_error(
                index_dir,
                self._faiss_name,
                f"it holds {self._faiss.ntotal} vectors of width {self._faiss.d}, "
                f"{manifest.db_file} {len(self.ids)} of width {dim}",
            )

    @property
    def count(self) -> int:
        """Number of items."""
        return len(self.ids)

    def _locate(self, ids: Any) -> tuple[np.ndarray, np.ndarray]:
        """(shard, row) of each id; `KeyError` for ids that are not in this collection."""
        wanted = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(self.ids) == 0:
            pos = np.zeros(len(wanted), dtype=np.int64)
            bad = np.ones(len(wanted), dtype=bool)
        else:
            pos = np.minimum(np.searchsorted(self.ids, wanted), len(self.ids) - 1)
            bad = self.ids[pos] != wanted
        if bad.any():
            raise KeyError(f"unknown {self.name[:-1]} id(s) {wanted[bad][:10].tolist()}")
        return self._shards[pos], self._rows[pos]

    def vectors(self, ids: Any) -> np.ndarray:
        """Stored embeddings ``(n, d)`` float32, L2-normalised, read from the shards (not FAISS).

        Raises:
            KeyError: an id that is not in this collection.
        """
        shards, rows = self._locate(ids)
        return self._reader.rows(shards, rows, self.dim)

    def search(self, xq: np.ndarray, k: int, where: Where | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items by inner product.

        Args:
            xq: ``(nq, d)`` float32 queries (L2-normalised for cosine).
            k: results per query.
            where: only the items that pass this filter (`stores.filters.parse_where`). Default: all.

        Returns:
            ``D (nq, k)`` float32 inner products, ``I (nq, k)`` int64 ids; ``-1`` / ``-inf`` padding.
        """
        xq = np.asarray(xq, dtype=np.float32)
        if xq.ndim != 2 or xq.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (nq, {self.dim}), got {xq.shape}")
        params = self._params.get(k)
        if params is None:
            params = make_search_params(self.info.kind, self.info.search_params, k, self.info.recall_k or 10)
            if len(self._params) < 64:  # the few k a server uses, made once
                self._params[k] = params
        keep: list[Any] = []
        if where is not None:
            fresh = make_search_params(self.info.kind, self.info.search_params, k, self.info.recall_k or 10)
            params, keep = with_selector(fresh, self._selector(where))
        dist, labels = search(self._faiss, xq, k, params)
        del keep  # the selector and its parameters lived through the search
        check_search_result(xq, dist, labels, self.ids, self._faiss_name, self._index_dir)
        return dist, labels

    def _selector(self, where: Where) -> faiss.IDSelector:
        """The FAISS selector of the images that pass ``where`` (an allow-list from SQLite), made once."""
        if self.name != "images":
            raise InputError("--where restricts images; the captions have no fields to filter on")
        selector = self._selectors.get(where.text)
        if selector is None:
            allowed = allowed_ids(where, self._meta.query)
            selector = faiss.IDSelectorBatch(len(allowed), faiss.swig_ptr(allowed))
            selector.allowed = allowed  # kept alive with it
            if len(self._selectors) < 64:
                self._selectors[where.text] = selector
        return selector

    def meta(self, ids: Any) -> list[dict[str, Any]]:
        """Metadata per id, in order (see the subclasses); `KeyError` for an unknown id."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the memory maps."""
        self._reader.close()


class ImageCollection(Collection):
    """The images of an index."""

    name = "images"

    def __init__(self, index_dir: Path, manifest: Manifest, meta: SqliteMetadataProvider) -> None:
        super().__init__(index_dir, manifest, meta)
        self.root = Path(manifest.root)
        self._imported = has_sources(meta.query)  # interop.py: imported images may have no file here

    def meta(self, ids: Any) -> list[dict[str, Any]]:
        """Per id, in order: id, path (relative to the root), abs_path, size, mtime, sha256, width, height,
        has_file and url. An image imported without its file on this machine has ``abs_path`` None and
        ``has_file`` False (its ``path`` is its original image_path or url).

        Raises:
            KeyError: an id that is not a valid image of this index.
        """
        wanted = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
        rows = self._meta.get(
            "images", wanted, ("path_key", "size", "mtime_ns", "sha256", "width", "height", "status")
        )
        sources = item_sources(self._meta.query, wanted) if self._imported else {}
        out = []
        for item_id, row in zip(wanted, rows, strict=True):
            if row is None or row["status"] != "indexed":
                raise KeyError(f"unknown image id {item_id}")
            rel = os.fsdecode(row["path_key"])
            image_path, url, has_file = sources.get(item_id, (None, None, True))
            out.append(
                {
                    "id": item_id,
                    "path": rel if has_file else (image_path or url or rel),
                    "abs_path": str(self.root / rel) if has_file else None,
                    "size": row["size"],
                    "mtime": row["mtime_ns"] / 1e9 if row["mtime_ns"] is not None else None,
                    "sha256": row["sha256"],
                    "width": row["width"],
                    "height": row["height"],
                    "has_file": has_file,
                    "url": url,
                }
            )
        return out


class CaptionCollection(Collection):
    """The captions of an index (sidecars, captions file, vocabulary)."""

    name = "captions"

    def meta(self, ids: Any) -> list[dict[str, Any]]:
        """Per caption id, in order: id, text, source (the first occurrence's: "sidecar", "captions-file"
        or "vocab"), image_id (int or None), and image_ids (every image it describes).

        Raises:
            KeyError: an id that is not a caption of this index.
        """
        wanted = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
        rows = self._meta.get("captions", wanted, ("text",))
        links: dict[int, list[tuple[str, int | None]]] = {}
        unique = sorted(set(wanted))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for caption_id, source, image_id in self._meta.query(
                f"SELECT caption_id, source, image_id FROM caption_links WHERE caption_id IN ({marks}) "
                "ORDER BY caption_id, position",
                chunk,
            ):
                links.setdefault(int(caption_id), []).append((source, image_id))
        out = []
        for caption_id, row in zip(wanted, rows, strict=True):
            if row is None:
                raise KeyError(f"unknown caption id {caption_id}")
            occurrences = links.get(caption_id, [("vocab", None)])
            first = occurrences[0]
            out.append(
                {
                    "id": caption_id,
                    "text": row["text"],
                    "source": first[0],
                    "image_id": first[1],
                    "image_ids": sorted({i for _, i in occurrences if i is not None}),
                }
            )
        return out

    def texts_of_images(self, image_ids: Any) -> dict[int, list[str]]:
        """The captions written for each image (sidecars and captions files; vocabulary captions describe
        no image), keyed by image id; an image with none is absent from the result."""
        wanted = sorted({int(i) for i in np.asarray(image_ids, dtype=np.int64).reshape(-1)})
        found: dict[int, list[str]] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for image_id, text in self._meta.query(
                "SELECT l.image_id, c.text FROM caption_links l JOIN captions c ON c.id = l.caption_id "
                f"WHERE l.image_id IN ({marks}) ORDER BY l.image_id, l.position",
                chunk,
            ):
                found.setdefault(int(image_id), []).append(text)
        return found
