"""Embedding shards: ``embeddings/{kind}-NNNNN.npy`` (float32 ``(n, d)``) + ``{kind}-NNNNN.ids.npy`` (int64).

Shards are immutable once written (atomically). The raw vectors are the source of truth: FAISS indexes
are rebuilt from them, and `Index.image_vectors` reads them. A shard is live only while rows of
``items.sqlite`` point at it; anything else in ``embeddings/`` is debris of an interrupted run and is
deleted by `remove_debris`.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from counterclip._fileio import TMP_SUFFIX, atomic_write, fsync_dir

LOG = logging.getLogger(__name__)
_NAME = re.compile(r"^(images|captions)-(\d{5,})(\.ids)?\.npy$")


def shard_paths(directory: Path, kind: str, number: int) -> tuple[Path, Path]:
    """(vectors, ids) file paths of shard ``number``."""
    return directory / f"{kind}-{number:05d}.npy", directory / f"{kind}-{number:05d}.ids.npy"


def write_shard(directory: Path, kind: str, number: int, vectors: np.ndarray, ids: np.ndarray) -> None:
    """Write one shard atomically (ids file first, then vectors; both fsynced).

    Args:
        directory: the ``embeddings/`` directory.
        kind: ``images`` or ``captions``.
        number: shard number (unique per kind; never reused while referenced).
        vectors: ``(n, d)`` float32.
        ids: ``(n,)`` int64.
    """
    assert vectors.ndim == 2 and ids.shape == (vectors.shape[0],), (vectors.shape, ids.shape)
    vec_path, ids_path = shard_paths(directory, kind, number)
    atomic_write(ids_path, lambda h: np.save(h, np.ascontiguousarray(ids, dtype=np.int64)))
    atomic_write(vec_path, lambda h: np.save(h, np.ascontiguousarray(vectors, dtype=np.float32)))


def remove_debris(directory: Path, kind: str, referenced: set[int]) -> list[str]:
    """Delete temp files and shards no row points at; returns the names removed."""
    removed = []
    for path in sorted(directory.glob(f"{kind}-*")):
        match = _NAME.match(path.name)
        if path.name.endswith(TMP_SUFFIX) or (match and int(match.group(2)) not in referenced):
            path.unlink()
            removed.append(path.name)
    if removed:
        fsync_dir(directory)
        LOG.info("removed %d leftover %s shard file(s) of an interrupted run", len(removed), kind)
    return removed


def delete_shards(directory: Path, kind: str, numbers: Sequence[int]) -> None:
    """Delete shards (after the rows moved away from them)."""
    for number in numbers:
        for path in shard_paths(directory, kind, number):
            path.unlink(missing_ok=True)
    if numbers:
        fsync_dir(directory)


def read_ids(directory: Path, kind: str, number: int) -> np.ndarray:
    """The ids of one shard."""
    return np.load(shard_paths(directory, kind, number)[1])


def iterate_shards(
    directory: Path, kind: str, numbers: Sequence[int], split: tuple[int, int] = (1, 0)
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(vectors (n, d) float32, ids (n,) int64)`` per shard, in the order of ``numbers``.

    Args:
        directory: the ``embeddings/`` directory.
        kind: ``images`` or ``captions``.
        numbers: shard numbers to read.
        split: ``(nsplit, rank)``: yield only the shards with ``position % nsplit == rank`` (to spread
            the work over processes). Default: (1, 0), everything.
    """
    nsplit, rank = split
    assert 0 <= rank < nsplit
    for position, number in enumerate(numbers):
        if position % nsplit != rank:
            continue
        vec_path, ids_path = shard_paths(directory, kind, number)
        vectors, ids = np.load(vec_path), np.load(ids_path)
        assert vectors.shape[0] == ids.shape[0], f"shard {vec_path.name}: {vectors.shape} vs {ids.shape}"
        yield vectors, ids


class ShardReader:
    """Random access to shard rows (memory-mapped, opened lazily, shared by threads)."""

    def __init__(self, directory: Path, kind: str) -> None:
        self.directory = directory
        self.kind = kind
        self._open: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def _shard(self, number: int) -> np.ndarray:
        array = self._open.get(number)
        if array is None:
            with self._lock:
                array = self._open.get(number)
                if array is None:
                    array = np.load(shard_paths(self.directory, self.kind, number)[0], mmap_mode="r")
                    self._open[number] = array
        return array

    def rows(self, shards: np.ndarray, rows: np.ndarray, dim: int) -> np.ndarray:
        """Vectors at (shard, row) pairs -> ``(n, dim)`` float32 (a copy)."""
        out = np.empty((len(shards), dim), dtype=np.float32)
        for number in np.unique(shards):
            mask = shards == number
            out[mask] = self._shard(int(number))[rows[mask]]
        return out

    def close(self) -> None:
        with self._lock:
            self._open.clear()
