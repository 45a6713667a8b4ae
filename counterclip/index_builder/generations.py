"""Generations on disk: readers pin one, the current one is watched cheaply, old ones are collected.

- A reader pins generation G with a shared ``flock`` on ``manifest-G.json`` (`GenerationPin`) and keeps
  it until it closes; it then sees only G's files, which never change.
- `collect_garbage` removes the files of generations older than the current one that no reader holds:
  it takes each old manifest's lock exclusively *without waiting* (a held one is kept for later) and
  deletes the files that no kept generation lists, the manifest file last. A reader that read the old
  pointer just before finds its manifest unlinked after the lock (``st_nlink == 0``) and starts again.
  Only generations *older* than the current are collected, so the files of one being written are safe.
- `remove_debris` (writer only, under the writer lock) deletes what no manifest and no work in progress
  lists: temp files and files of runs that were interrupted or discarded.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from counterclip._fileio import TMP_SUFFIX, fsync_dir
from counterclip.errors import AccessDeniedError, IndexFormatError
from counterclip.index_builder.manifest import (
    EMBEDDINGS_DIR,
    GC_LOCK_NAME,
    MANIFEST_NAME,
    Manifest,
    damaged_error,
    manifest_generations,
    manifest_name,
    parse_generation_file,
)

LOG = logging.getLogger(__name__)
_SQLITE_SIDECARS = ("-wal", "-shm", "-journal")


class GenerationPin:
    """A reader's shared lock on one generation: its files stay until `release`.

    Attributes:
        generation: the pinned generation.
        manifest: its manifest (read from the locked file).
    """

    def __init__(self, fd: int, manifest: Manifest) -> None:
        self._fd: int | None = fd
        self.manifest = manifest
        self.generation = manifest.generation

    @classmethod
    def acquire(cls, index_dir: Path) -> GenerationPin:
        """Pin the current generation of ``index_dir``.

        Raises:
            IndexFormatError / IndexDamagedError / AccessDeniedError: see `Manifest.read`; a generation
                manifest that is missing or disagrees with ``manifest.json`` is damage.
        """
        for _ in range(50):
            pointer = Manifest.read(index_dir)
            name = manifest_name(pointer.generation)
            try:
                fd = os.open(index_dir / name, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                if _pointer_generation(index_dir) != pointer.generation:
                    continue  # an update switched and collected it meanwhile
                raise damaged_error(index_dir, name, "missing") from None
            except PermissionError:
                raise AccessDeniedError(f"index {index_dir}: permission denied reading {name}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
                if os.fstat(fd).st_nlink == 0:  # collected between our read of the pointer and the lock
                    os.close(fd)
                    continue
                manifest = Manifest.parse(_read_fd(fd), index_dir, name)
                if manifest.generation != pointer.generation or manifest.to_dict() != pointer.to_dict():
                    raise damaged_error(index_dir, name, "it disagrees with manifest.json")
            except BaseException:
                os.close(fd)
                raise
            return cls(fd, manifest)
        raise IndexFormatError(f"index {index_dir} changed generation 50 times while being opened; try again")

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read_fd(fd: int) -> bytes:
    chunks = []
    offset = 0
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def _pointer_generation(index_dir: Path) -> int | None:
    try:
        return Manifest.read(index_dir).generation
    except (IndexFormatError, AccessDeniedError):
        return None


class GenerationWatch:
    """The current generation of an index, for one ``stat`` per call while it does not change.

    ``manifest.json`` is replaced by a rename at every switch, so its inode, size and mtime change; only
    then is it read again. Thread-safe.
    """

    def __init__(self, index_dir: Path) -> None:
        self._path = index_dir / MANIFEST_NAME
        self._index_dir = index_dir
        self._lock = threading.Lock()
        self._key: tuple[int, int, int] | None = None
        self._generation: int | None = None

    def current(self) -> int | None:
        """The current generation, or None when ``manifest.json`` is missing or unreadable."""
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            if key == self._key:
                return self._generation
        generation = _pointer_generation(self._index_dir)
        with self._lock:
            self._key, self._generation = key, generation
        return generation


# --- collection -----------------------------------------------------------------------------------
def collect_garbage(index_dir: Path) -> list[str]:
    """Remove the files of old generations that no reader holds; returns the names removed.

    Never waits for a reader: a generation a reader holds is kept (its last reader's `Index.close` or a
    later update collects it). Collections are serialised by ``.gc.lock`` (each takes milliseconds).
    """
    try:
        gc_fd = os.open(index_dir / GC_LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        return []  # a read-only reader: the next update collects
    try:
        fcntl.flock(gc_fd, fcntl.LOCK_EX)
        return _collect(index_dir)
    finally:
        os.close(gc_fd)


def has_old_generations(index_dir: Path, current: int) -> bool:
    """Some generation older than ``current`` still has its manifest (one directory listing)."""
    return any(g < current for g in manifest_generations(index_dir))


def _collect(index_dir: Path) -> list[str]:
    current = _pointer_generation(index_dir)
    if current is None:
        return []
    keep: set[str] = set()
    free: list[tuple[int, int]] = []  # (generation, fd holding its exclusive lock)
    removed: list[str] = []
    try:
        for generation in manifest_generations(index_dir):
            name = manifest_name(generation)
            if generation < current:
                try:
                    fd = os.open(index_dir / name, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    os.close(fd)
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                        raise
                else:
                    free.append((generation, fd))
                    continue
            files = _listed_files(index_dir, generation)
            if files is None:
                LOG.warning("%s: %s is unreadable; old generations are kept", index_dir, name)
                return []
            keep |= files | {name}
        for generation, _ in free:
            files = _listed_files(index_dir, generation) or set()
            for rel in sorted(files - keep):
                if _unlink(index_dir / rel):
                    removed.append(rel)
            name = manifest_name(generation)
            if _unlink(index_dir / name):
                removed.append(name)
    finally:
        for _, fd in free:
            os.close(fd)
    if removed:
        fsync_dir(index_dir)
        if (index_dir / EMBEDDINGS_DIR).is_dir():
            fsync_dir(index_dir / EMBEDDINGS_DIR)
        LOG.info("%s: removed %d file(s) of old generations", index_dir, len(removed))
    return removed


def _listed_files(index_dir: Path, generation: int) -> set[str] | None:
    """The files generation ``generation`` lists, or None when its manifest cannot be read."""
    from counterclip.index_builder.manifest import read_generation

    try:
        return set(read_generation(index_dir, generation).files)
    except (OSError, IndexFormatError):
        return None


def published_files(index_dir: Path) -> set[str]:
    """Every file some readable generation manifest lists (a writer never deletes or rewrites these)."""
    out: set[str] = set()
    for generation in manifest_generations(index_dir):
        out |= _listed_files(index_dir, generation) or set()
    return out


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def remove_debris(index_dir: Path, keep: Iterable[str]) -> list[str]:
    """Delete temp files and generation files that no manifest and no work in progress lists (writer only).

    Args:
        index_dir: the index directory.
        keep: relative names the writer's work in progress uses (its SQLite file, shards, FAISS files).

    Returns:
        the names removed. Nothing but temp files is removed while a manifest cannot be read.
    """
    keep = set(keep)
    readable = True
    for generation in manifest_generations(index_dir):
        files = _listed_files(index_dir, generation)
        if files is None:
            readable = False
        else:
            keep |= files | {manifest_name(generation)}
    for name in list(keep):
        keep.update(name + suffix for suffix in _SQLITE_SIDECARS)
    removed = []
    emb = index_dir / EMBEDDINGS_DIR
    candidates = [p for p in index_dir.iterdir() if p.is_file()]
    if emb.is_dir():
        candidates += [p for p in emb.iterdir() if p.is_file()]
    for path in candidates:
        rel = path.relative_to(index_dir).as_posix()
        if rel in keep:
            continue
        base = path.name
        for suffix in _SQLITE_SIDECARS:
            if base.endswith(suffix):
                base = base[: -len(suffix)]
        is_temp = base.endswith(TMP_SUFFIX)  # a temp file, or the journal of a temp SQLite file
        is_data = parse_generation_file(base) is not None or path.parent == emb
        if is_temp or (readable and is_data and not base.startswith("manifest-")):
            path.unlink()
            removed.append(rel)
    if removed:
        fsync_dir(index_dir)
        if emb.is_dir():
            fsync_dir(emb)
        LOG.info("%s: removed %d leftover file(s) of an interrupted run", index_dir, len(removed))
    return removed
