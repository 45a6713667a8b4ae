"""`Index`: read-only access to a built index (counts, vectors, metadata, search), safe across threads.

Opened once per process and shared: FAISS searches run concurrently, SQLite reads use one connection
per thread, shards are memory-mapped on first use.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from counterclip.calibration import Calibration
from counterclip.errors import IndexFormatError, IndexLockedError
from counterclip.index_builder._fs import writer_pid
from counterclip.index_builder.budget import open_faiss
from counterclip.index_builder.decode import DecodeOptions, LoadedImage, load_image
from counterclip.index_builder.faiss_index import FaissInfo, make_search_params, search
from counterclip.index_builder.manifest import DB_NAME, EMBEDDINGS_DIR, FAISS_FILES, MANIFEST_NAME, Manifest
from counterclip.index_builder.shards import ShardReader
from counterclip.index_builder.sources import has_sources, item_sources
from counterclip.index_builder.store import SqliteMetadataProvider
from counterclip.models import ClipModel

LOG = logging.getLogger(__name__)


class Collection:
    """One collection of an index, the images or the captions: ids, stored vectors, search, metadata.

    The engine moves one side of a pair against one collection (`Index.images` or `Index.captions`).

    Attributes:
        name: ``images`` or ``captions``.
        ids: all ids, ascending, int64 (read-only).
        info: the FAISS index's kind, parameters and measured recall.
    """

    name: str

    def __init__(self, index_dir: Path, meta: SqliteMetadataProvider, dim: int, info: FaissInfo) -> None:
        rows = meta.query(f"SELECT id, shard, row FROM {self.name} WHERE status = 'indexed' ORDER BY id")
        table = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
        self.ids = np.ascontiguousarray(table[:, 0])
        self.ids.setflags(write=False)
        self._shards = np.ascontiguousarray(table[:, 1])
        self._rows = np.ascontiguousarray(table[:, 2])
        self._reader = ShardReader(index_dir / EMBEDDINGS_DIR, self.name)
        self._faiss = open_faiss(index_dir / FAISS_FILES[self.name], info)  # budget.py: ram/mmap/ondisk
        self._meta = meta
        self.info = info
        self._params = make_search_params(info.kind, info.search_params)
        self.dim = dim
        if self._faiss.ntotal != len(self.ids) or self._faiss.d != dim:
            raise IndexFormatError(
                f"index {index_dir}: {FAISS_FILES[self.name]} holds {self._faiss.ntotal} vectors of width "
                f"{self._faiss.d}, items.sqlite {len(self.ids)} of width {dim}; "
                f"run `counterclip update {index_dir}` to rebuild it"
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

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items by inner product.

        Args:
            xq: ``(nq, d)`` float32 queries (L2-normalised for cosine).
            k: results per query.

        Returns:
            ``D (nq, k)`` float32 inner products, ``I (nq, k)`` int64 ids; ``-1`` / ``-inf`` padding.
        """
        xq = np.asarray(xq, dtype=np.float32)
        if xq.ndim != 2 or xq.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (nq, {self.dim}), got {xq.shape}")
        return search(self._faiss, xq, k, self._params)

    def meta(self, ids: Any) -> list[dict[str, Any]]:
        """Metadata per id, in order (see the subclasses); `KeyError` for an unknown id."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the memory maps."""
        self._reader.close()


class ImageCollection(Collection):
    """The images of an index."""

    name = "images"

    def __init__(
        self, index_dir: Path, meta: SqliteMetadataProvider, dim: int, info: FaissInfo, root: Path
    ) -> None:
        super().__init__(index_dir, meta, dim, info)
        self.root = root
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


class Index:
    """A built index, opened read-only.

    Attributes:
        path: the index directory.
        root: the image folder it was built from (absolute).
        manifest: the typed ``manifest.json`` (`Manifest`).
        model_spec: the `ModelSpec` that built it (``load_model(idx.model_spec)`` reloads the model).
        fingerprint: that model's weights fingerprint.
        dim: embedding width.
        decode_options: how the build decoded files (`load_image` reproduces it).
        images / captions: the two collections (`ImageCollection`, `CaptionCollection`): ids, vectors,
            search, metadata.
        calibration: the `Calibration` fitted on the index's known pairs (captions), or None.

    Examples::

        >>> with Index.open("photos.idx") as idx:
        ...     D, I = idx.images.search(idx.images.vectors(idx.images.ids[:1]), k=5)
        ...     idx.images.meta(I[0])[0]["path"]
        'cats/001.jpg'
    """

    def __init__(self, path: Path, manifest: Manifest, meta: SqliteMetadataProvider) -> None:
        self.path = path
        self.manifest = manifest
        self._meta = meta
        self.model_spec = manifest.model.spec
        self.fingerprint = manifest.model.fingerprint
        self.dim = manifest.model.embed_dim
        self.root = Path(manifest.root)
        self.decode_options = DecodeOptions(**manifest.settings.decode)
        self.images = ImageCollection(
            path, meta, self.dim, FaissInfo.from_dict(manifest.faiss["images"]), self.root
        )
        self.calibration = (
            Calibration.from_dict(manifest.calibration, f"index {path}: the manifest's calibration")
            if manifest.calibration
            else None
        )
        self.captions = CaptionCollection(
            path, meta, self.dim, FaissInfo.from_dict(manifest.faiss["captions"])
        )
        self._closed = False

    # --- opening --------------------------------------------------------------------------------
    @classmethod
    def open(cls, index_dir: str | os.PathLike[str], model: ClipModel | None = None) -> Index:
        """Open the index at ``index_dir``.

        Args:
            index_dir: the index directory.
            model: optional loaded model; when its fingerprint differs from the one that built the
                index, `IndexFormatError` names both specs. Default: None (no check).

        Raises:
            IndexFormatError: missing, incomplete (interrupted build), of another format, or another model.
            IndexLockedError: a build is writing the index right now.
        """
        started = time.perf_counter()
        path = Path(index_dir).expanduser().absolute()
        if not path.is_dir():
            raise IndexFormatError(f"no index at {path} (run `counterclip build FOLDER --index {path}`)")
        if not (path / MANIFEST_NAME).exists():
            pid = writer_pid(path)
            if pid is not None:
                raise IndexLockedError(
                    f"index {path} is locked by another process (pid {pid}) that is building it; "
                    "open it when that build has finished"
                )
            if not (path / DB_NAME).exists():
                raise IndexFormatError(
                    f"{path} is not a counterclip index (run `counterclip build FOLDER --index {path}`)"
                )
        manifest = Manifest.read(path)
        meta = SqliteMetadataProvider(path / DB_NAME)
        try:
            rows = meta.query("SELECT value FROM meta WHERE key = 'generation'")
            generation = int(rows[0][0]) if rows else None
            if generation != manifest.generation:
                raise IndexFormatError(
                    f"index {path} is inconsistent (manifest generation {manifest.generation}, "
                    f"items.sqlite generation {generation}); run `counterclip update {path}`"
                )
            index = cls(path, manifest, meta)
        except BaseException:
            meta.close()
            raise
        if model is not None and model.fingerprint != index.fingerprint:
            index.close()
            raise IndexFormatError(
                f"index {path} was built with model {index.model_spec} (fingerprint {index.fingerprint}), "
                f"not {model.spec} (fingerprint {model.fingerprint}); load the index's model "
                "(load_model(idx.model_spec)) or build an index with this one"
            )
        LOG.info(
            "opened %s: %d images, %d captions (%.2f s)",
            path,
            index.images.count,
            index.captions.count,
            time.perf_counter() - started,
        )
        return index

    def close(self) -> None:
        """Release the SQLite connections and memory maps."""
        if not self._closed:
            self._meta.close()
            self.images.close()
            self.captions.close()
            self._closed = True

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Index({str(self.path)!r}, images={self.images.count}, captions={self.captions.count}, "
            f"model={self.model_spec})"
        )

    def load_image(self, path: str | os.PathLike[str]) -> LoadedImage:
        """Decode a file exactly as this index decoded its images (same limits, same JPEG scaling), so
        that re-encoding an indexed file reproduces its stored vector.

        Args:
            path: relative to the root, or absolute.

        Raises:
            DecodeError: the file cannot be read or decoded (one-line reason).
        """
        p = Path(path)
        return load_image(p if p.is_absolute() else self.root / p, self.decode_options)

    def image_id_for_path(self, path: str | os.PathLike[str]) -> int | None:
        """The id of an indexed image given its path (relative to the root, or absolute); None if absent."""
        p = Path(path)
        if p.is_absolute():
            try:
                rel = p.relative_to(self.root)
            except ValueError:
                try:
                    rel = p.resolve().relative_to(self.root)
                except (ValueError, OSError):
                    return None
        else:
            rel = p
        rows = self._meta.query(
            "SELECT id FROM images WHERE path_key = ? AND status = 'indexed'", (os.fsencode(rel.as_posix()),)
        )
        return int(rows[0][0]) if rows else None

    # --- reporting ------------------------------------------------------------------------------
    def errors(self) -> list[dict[str, Any]]:
        """Files skipped by the build: [{id, path, reason}]."""
        rows = self._meta.query("SELECT id, path, error FROM images WHERE status = 'error' ORDER BY path_key")
        return [{"id": int(i), "path": p, "reason": e} for i, p, e in rows]

    def size_on_disk(self) -> int:
        """Bytes used by the index directory."""
        total = 0
        for dirpath, _, files in os.walk(self.path):
            for name in files:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except OSError:
                    pass
        return total
