"""`Index`: read-only access to one generation of a built index (counts, vectors, metadata, search),
safe across threads.

Opened once per process and shared: FAISS searches run concurrently, SQLite reads use one connection
per thread, shard rows are read on demand. An open `Index` pins its generation: an update running
meanwhile writes the next generation beside it, and this object keeps answering from its own, complete
and unchanged, until it is closed. `Index.newer_generation` tells (for one ``stat``) when a newer one
is current, `Index.reopen` opens it.

Opening checks every file of the generation against the manifest: sizes of all, checksums of the SQLite
and FAISS files (read whole anyway); shard rows are checked as they are read (header, unit norm).
`counterclip check` verifies everything.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from counterclip.calibration import Calibration
from counterclip.errors import AccessDeniedError, IndexFormatError, IndexLockedError
from counterclip.index_builder._fs import writer_pid
from counterclip.index_builder.checksums import mismatch, size_reason
from counterclip.index_builder.decode import (
    DecodeOptions,
    LoadedImage,
    QuerySource,
    decode_in_words,
    decode_query,
    load_image,
)
from counterclip.index_builder.generations import (
    GenerationPin,
    GenerationWatch,
    collect_garbage,
    has_old_generations,
)
from counterclip.index_builder.index_collections import CaptionCollection, ImageCollection
from counterclip.index_builder.manifest import (
    LEGACY_DB_NAME,
    MANIFEST_NAME,
    Manifest,
    damaged_error,
    manifest_generations,
)
from counterclip.index_builder.store import SqliteMetadataProvider

if TYPE_CHECKING:  # importing the models would import torch; an Index opens without a model
    from counterclip.models import ClipModel

LOG = logging.getLogger(__name__)


class Index:
    """One generation of a built index, opened read-only.

    Attributes:
        path: the index directory.
        generation: the generation this object reads (pinned until `close`).
        root: the image folder it was built from (absolute).
        manifest: the generation's typed manifest (`Manifest`).
        model_spec: the `ModelSpec` that built it (``load_model(idx.model_spec)`` reloads the model).
        fingerprint: that model's weights fingerprint.
        dim: embedding width.
        decode_options: how the build decoded files (`load_image` and `decode_query` reproduce it).
        images / captions: the two collections (`ImageCollection`, `CaptionCollection`): ids, vectors,
            search, metadata.
        calibration: the `Calibration` fitted on the index's known pairs (captions), or None.

    Examples::

        >>> with Index.open("photos.idx") as idx:
        ...     D, I = idx.images.search(idx.images.vectors(idx.images.ids[:1]), k=5)
        ...     idx.images.meta(I[0])[0]["path"]
        'cats/001.jpg'
    """

    def __init__(
        self, path: Path, manifest: Manifest, meta: SqliteMetadataProvider, pin: GenerationPin | None = None
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.generation = manifest.generation
        self._meta = meta
        self._pin = pin
        self._watch = GenerationWatch(path)
        self.model_spec = manifest.model.spec
        self.fingerprint = manifest.model.fingerprint
        self.dim = manifest.model.embed_dim
        self.root = Path(manifest.root)
        self.decode_options = DecodeOptions(**manifest.settings.decode)
        self.images = ImageCollection(path, manifest, meta)
        self.captions = CaptionCollection(path, manifest, meta)
        self.calibration = (
            Calibration.from_dict(manifest.calibration, f"index {path}: the manifest's calibration")
            if manifest.calibration
            else None
        )
        self._closed = False

    # --- opening --------------------------------------------------------------------------------
    @classmethod
    def open(cls, index_dir: str | os.PathLike[str], model: ClipModel | None = None) -> Index:
        """Open the current generation of the index at ``index_dir`` and pin it until `close`.

        Args:
            index_dir: the index directory.
            model: optional loaded model; when its fingerprint differs from the one that built the
                index, `IndexFormatError` names both specs. Default: None (no check).

        Raises:
            IndexFormatError: missing, incomplete (interrupted first build), of another format, or another model.
            IndexDamagedError: a file that is missing or not what the manifest records (names the file).
            IndexLockedError: the first build is writing the index right now.
        """
        started = time.perf_counter()
        path = Path(index_dir).expanduser().absolute()
        if not path.is_dir():
            raise IndexFormatError(f"no index at {path} (run `counterclip build FOLDER --index {path}`)")
        if not (path / MANIFEST_NAME).exists() and not manifest_generations(path):
            pid = writer_pid(path)
            if pid is not None:
                raise IndexLockedError(
                    f"index {path} is locked by another process (pid {pid}) that is building it; "
                    "open it when that build has finished"
                )
            if not any(path.glob("items-*.sqlite")) and not (path / LEGACY_DB_NAME).exists():
                raise IndexFormatError(
                    f"{path} is not a counterclip index (run `counterclip build FOLDER --index {path}`)"
                )
        try:
            return cls._open(path, model, started)
        except PermissionError as exc:
            raise AccessDeniedError(
                f"index {path}: permission denied reading {exc.filename or path}"
            ) from None

    @classmethod
    def _open(cls, path: Path, model: ClipModel | None, started: float) -> Index:
        pin = GenerationPin.acquire(path)
        meta = None
        try:
            manifest = pin.manifest
            check_sizes(path, manifest)
            db = path / manifest.db_file
            problem = mismatch(db, manifest.checksum(manifest.db_file))
            if problem is not None:
                raise damaged_error(path, manifest.db_file, problem)
            meta = SqliteMetadataProvider(db)
            rows = meta.query("SELECT value FROM meta WHERE key = 'generation'")
            generation = int(rows[0][0]) if rows else None
            if generation != manifest.generation:
                raise damaged_error(
                    path,
                    manifest.db_file,
                    f"it holds generation {generation}, the manifest {manifest.generation}",
                )
            index = cls(path, manifest, meta, pin)
        except BaseException:
            if meta is not None:
                meta.close()
            pin.release()
            raise
        if model is not None and model.fingerprint != index.fingerprint:
            index.close()
            raise IndexFormatError(
                f"index {path} was built with model {index.model_spec} (fingerprint {index.fingerprint}), "
                f"not {model.spec} (fingerprint {model.fingerprint}); load the index's model "
                "(load_model(idx.model_spec)) or build an index with this one"
            )
        LOG.info(
            "opened %s generation %d: %d images, %d captions (%.2f s)",
            path,
            index.generation,
            index.images.count,
            index.captions.count,
            time.perf_counter() - started,
        )
        return index

    # --- generations ----------------------------------------------------------------------------
    def newer_generation(self) -> int | None:
        """The current generation when it is not this object's (an update finished since it was
        opened), else None. One ``stat`` while nothing changed; thread-safe."""
        current = self._watch.current()
        return current if current is not None and current != self.generation else None

    def reopen(self) -> Index:
        """Open the current generation (a new `Index`; close this one when no query uses it any more).

        Raises:
            IndexFormatError: the index was rebuilt with another model meanwhile (and the open errors).
        """
        fresh = Index.open(self.path)
        if fresh.fingerprint != self.fingerprint:
            fresh.close()
            raise IndexFormatError(
                f"index {self.path} was rebuilt with another model (fingerprint {fresh.fingerprint}, "
                f"was {self.fingerprint}); open it with that model"
            )
        return fresh

    def close(self) -> None:
        """Release the SQLite connections and the generation (its files are removed when no reader
        holds them any more and a newer generation is current)."""
        if self._closed:
            return
        self._closed = True
        self._meta.close()
        self.images.close()
        self.captions.close()
        if self._pin is not None:
            self._pin.release()
            current = self._watch.current()
            if current is not None and has_old_generations(self.path, current):
                try:
                    collect_garbage(self.path)
                except Exception as exc:  # noqa: BLE001 - best effort; the next update collects
                    LOG.info("%s: old generations left for the next update (%s)", self.path, exc)

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Index({str(self.path)!r}, generation={self.generation}, images={self.images.count}, "
            f"captions={self.captions.count}, model={self.model_spec})"
        )

    def decode_query(self, source: QuerySource) -> LoadedImage:
        """Decode a query image (a path, the bytes of a file, or a PIL image) exactly as this index
        decoded its files (`decode.decode_query` with the index's options): an uploaded copy of an
        indexed file reproduces its stored vector.

        Raises:
            DecodeError: not a readable image (one-line reason).
        """
        return decode_query(source, self.decode_options)

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
    def describe(self) -> dict[str, Any]:
        """What ``counterclip info`` reports about this index (its ``--json``): counts, model, FAISS, runs,
        settings, calibration, runtime, decode rule, size and the skipped files."""
        manifest = self.manifest
        errors = self.errors()
        return {
            "index": str(self.path),
            "root": str(self.root),
            "images": self.images.count,
            "captions": self.captions.count,
            "skipped": len(errors),
            "model": str(manifest.model.spec),
            "model_spec": manifest.model.spec.to_dict(),
            "fingerprint": self.fingerprint,
            "embed_dim": self.dim,
            "faiss": manifest.faiss,
            "created": manifest.created,
            "updated": manifest.updated,
            "generation": manifest.generation,
            "last_run": manifest.last_run,
            "settings": dataclasses.asdict(manifest.settings),
            "calibration": manifest.calibration,
            "runtime": manifest.model.runtime or {"runtime": "torch", "precision": "fp32"},
            "decode": decode_in_words(manifest.settings),
            "size_on_disk_bytes": self.size_on_disk(),
            "errors": [{"path": e["path"], "reason": e["reason"]} for e in errors],
        }

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


def check_sizes(index_dir: Path, manifest: Manifest) -> None:
    """Every file the generation lists exists with its recorded size (`IndexDamagedError` naming the first
    that does not)."""
    for name in sorted(manifest.files):
        expected = manifest.checksum(name)
        try:
            size = (index_dir / name).stat().st_size
        except FileNotFoundError:
            raise damaged_error(index_dir, name, "missing") from None
        except PermissionError:
            raise AccessDeniedError(f"index {index_dir}: permission denied reading {name}") from None
        if size != expected.size:
            raise damaged_error(index_dir, name, size_reason(size, expected.size))
