"""Embedding shards: ``embeddings/{kind}-NNNNN.npy`` (float32 ``(n, d)``) + ``{kind}-NNNNN.ids.npy`` (int64).

Shards are immutable once written (atomically), and a number is used once: generations share a shard
for as long as its rows live. The raw vectors are the source of truth: FAISS indexes are rebuilt from
them, and `Collection.vectors` reads them. A whole shard read is checked against its recorded checksum,
rows read one by one against the checksums of their blocks (`shard_check`), and every stored vector is
L2-normalised, which readers check on each read: a damaged row is an error naming its file, never a
silent wrong score.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from counterclip._fileio import atomic_write, fsync_dir
from counterclip.errors import IndexDamagedError
from counterclip.index_builder.checksums import Checksum, HashingWriter, checksum_bytes, size_reason
from counterclip.index_builder.manifest import EMBEDDINGS_DIR, damaged_error
from counterclip.index_builder.shard_check import ShardVerifier

LOG = logging.getLogger(__name__)
NORM_TOLERANCE = 0.02  # |norm - 1| above this is damage (float16 models stay within 1e-3)


def shard_paths(directory: Path, kind: str, number: int) -> tuple[Path, Path]:
    """(vectors, ids) file paths of shard ``number``."""
    return directory / f"{kind}-{number:05d}.npy", directory / f"{kind}-{number:05d}.ids.npy"


def shard_names(kind: str, number: int) -> tuple[str, str]:
    """(vectors, ids) names of shard ``number`` relative to the index directory (the manifest's keys)."""
    return f"{EMBEDDINGS_DIR}/{kind}-{number:05d}.npy", f"{EMBEDDINGS_DIR}/{kind}-{number:05d}.ids.npy"


def damaged(path: Path, reason: str) -> IndexDamagedError:
    """The error for a damaged shard file (named relative to its index)."""
    return damaged_error(path.parent.parent, f"{EMBEDDINGS_DIR}/{path.name}", reason)


def write_shard(
    directory: Path, kind: str, number: int, vectors: np.ndarray, ids: np.ndarray
) -> dict[str, Checksum]:
    """Write one shard atomically (ids file first, then vectors; both fsynced).

    Args:
        directory: the ``embeddings/`` directory.
        kind: ``images`` or ``captions``.
        number: shard number (unique per kind; never reused once published).
        vectors: ``(n, d)`` float32.
        ids: ``(n,)`` int64.

    Returns:
        the checksums of the two files, by `shard_names`.
    """
    assert vectors.ndim == 2 and ids.shape == (vectors.shape[0],), (vectors.shape, ids.shape)
    vec_path, ids_path = shard_paths(directory, kind, number)
    sums = {}
    for path, array, name in (
        (ids_path, np.ascontiguousarray(ids, dtype=np.int64), shard_names(kind, number)[1]),
        (vec_path, np.ascontiguousarray(vectors, dtype=np.float32), shard_names(kind, number)[0]),
    ):
        writers: list[HashingWriter] = []
        blocks = path == vec_path  # the vectors are read by row: their blocks are checked as they are

        def save(handle, array=array, writers=writers, blocks=blocks) -> None:  # noqa: ANN001
            writer = HashingWriter(handle, blocks=blocks)
            np.save(writer, array)
            writers.append(writer)

        atomic_write(path, save)
        sums[name] = writers[-1].checksum()
    return sums


def delete_shards(directory: Path, kind: str, numbers: Sequence[int]) -> None:
    """Delete shards no generation lists (written by the running update, then compacted away)."""
    for number in numbers:
        for path in shard_paths(directory, kind, number):
            path.unlink(missing_ok=True)
    if numbers:
        fsync_dir(directory)


def _load_array(path: Path, expected: Checksum | None, dtype: str) -> np.ndarray:
    """Read a whole ``.npy`` file, check it against its recorded checksum, parse it."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise damaged(path, "missing") from None
    if expected is not None:
        got = checksum_bytes(data)
        if got.size != expected.size:
            raise damaged(path, size_reason(got.size, expected.size))
        if got.xxh3 != expected.xxh3:
            raise damaged(path, "checksum mismatch")
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise damaged(path, f"not a valid .npy file: {str(exc)[:80]}") from None
    if array.dtype != np.dtype(dtype):
        raise damaged(path, f"dtype {array.dtype}, expected {dtype}")
    return array


def load_shard(
    directory: Path, kind: str, number: int, checksums: dict[str, Checksum] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(vectors (n, d) float32, ids (n,) int64)`` of one shard, checked.

    Args:
        directory: the ``embeddings/`` directory.
        kind, number: the shard.
        checksums: recorded checksums by `shard_names` (a shard without one is checked for shape and
            norms only). Default: None.

    Raises:
        IndexDamagedError: a file that is missing, not the recorded bytes, or not a valid shard.
    """
    checksums = checksums or {}
    vec_path, ids_path = shard_paths(directory, kind, number)
    vec_name, ids_name = shard_names(kind, number)
    ids = _load_array(ids_path, checksums.get(ids_name), "int64")
    vectors = _load_array(vec_path, checksums.get(vec_name), "float32")
    if ids.ndim != 1:
        raise damaged(ids_path, f"shape {ids.shape}, expected (n,)")
    if vectors.ndim != 2 or vectors.shape[0] != ids.shape[0]:
        raise damaged(vec_path, f"shape {vectors.shape} for {ids.shape[0]} ids")
    check_norms(vectors, vec_path)
    return vectors, ids


def check_norms(vectors: np.ndarray, path: Path) -> None:
    """Every stored vector is L2-normalised; anything else is damage of ``path``."""
    if not len(vectors):
        return
    norms = np.linalg.norm(vectors.astype(np.float64, copy=False), axis=1)
    bad = ~(np.abs(norms - 1.0) <= NORM_TOLERANCE)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise damaged(
            path, f"{int(bad.sum())} vector(s) are not unit length, e.g. row {first}: {norms[first]:.4g}"
        )


def read_ids(
    directory: Path, kind: str, number: int, checksums: dict[str, Checksum] | None = None
) -> np.ndarray:
    """The ids of one shard (checked against its recorded checksum when given)."""
    ids_path = shard_paths(directory, kind, number)[1]
    expected = (checksums or {}).get(shard_names(kind, number)[1])
    ids = _load_array(ids_path, expected, "int64")
    if ids.ndim != 1:
        raise damaged(ids_path, f"shape {ids.shape}, expected (n,)")
    return ids


def iterate_shards(
    directory: Path,
    kind: str,
    numbers: Sequence[int],
    split: tuple[int, int] = (1, 0),
    checksums: dict[str, Checksum] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(vectors (n, d) float32, ids (n,) int64)`` per shard, in the order of ``numbers``, checked
    (see `load_shard`).

    Args:
        directory: the ``embeddings/`` directory.
        kind: ``images`` or ``captions``.
        numbers: shard numbers to read.
        split: ``(nsplit, rank)``: yield only the shards with ``position % nsplit == rank`` (to spread
            the work over processes). Default: (1, 0), everything.
        checksums: recorded checksums by `shard_names`. Default: None.
    """
    nsplit, rank = split
    assert 0 <= rank < nsplit
    for position, number in enumerate(numbers):
        if position % nsplit != rank:
            continue
        yield load_shard(directory, kind, number, checksums)


class _Header:
    """Where the rows of one vector file start, and how many there are."""

    def __init__(self, path: Path, dim: int) -> None:
        self.path = path
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                version = np.lib.format.read_magic(handle)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
                self.offset = handle.tell()
        except FileNotFoundError:
            raise damaged(path, "missing") from None
        except (ValueError, EOFError, OSError, SyntaxError) as exc:
            raise damaged(path, f"not a valid .npy file: {str(exc)[:80]}") from None
        if dtype != np.dtype("<f4") or fortran or len(shape) != 2 or shape[1] != dim:
            raise damaged(path, f"header says {dtype} {shape}, expected float32 (n, {dim})")
        self.rows = int(shape[0])
        self.row_bytes = 4 * dim
        if self.offset + self.rows * self.row_bytes != size:
            raise damaged(path, size_reason(size, self.offset + self.rows * self.row_bytes))


class ShardReader:
    """Random access to shard rows, shared by threads.

    Rows are read with ``pread`` (no memory maps: a file damaged while a reader runs gives an error, not
    a crash); the blocks holding them are checked against their recorded checksums when first read
    (`shard_check.ShardVerifier`), and every row is checked to be unit length.

    Args:
        directory: the ``embeddings/`` directory.
        kind: ``images`` or ``captions``.
        checksums: the generation's recorded checksums by `shard_names` (the manifest's). Default: none
            (unit length only).
    """

    def __init__(self, directory: Path, kind: str, checksums: Mapping[str, Checksum] | None = None) -> None:
        self.directory = directory
        self.kind = kind
        self._headers: dict[int, _Header] = {}
        self._lock = threading.Lock()
        self._verifier = ShardVerifier(checksums)

    def _header(self, number: int, dim: int) -> _Header:
        header = self._headers.get(number)
        if header is None:
            header = _Header(shard_paths(self.directory, self.kind, number)[0], dim)
            with self._lock:
                self._headers[number] = header
        return header

    def rows(self, shards: np.ndarray, rows: np.ndarray, dim: int) -> np.ndarray:
        """Vectors at (shard, row) pairs -> ``(n, dim)`` float32 (a copy).

        Raises:
            IndexDamagedError: a missing, short or damaged file, or a row that is not unit length.
        """
        out = np.empty((len(shards), dim), dtype=np.float32)
        for number in np.unique(shards):
            mask = shards == number
            wanted = rows[mask]
            header = self._header(int(number), dim)
            if len(wanted) and (wanted.max() >= header.rows or wanted.min() < 0):
                raise damaged(header.path, f"row {int(wanted.max())} asked, the file holds {header.rows}")
            name = shard_names(self.kind, int(number))[0]
            self._verifier.check_rows(header.path, name, header.offset, header.row_bytes, wanted)
            block = self._read(header, wanted)
            check_norms(block, header.path)
            out[mask] = block
        return out

    def _read(self, header: _Header, wanted: np.ndarray) -> np.ndarray:
        try:
            fd = os.open(header.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise damaged(header.path, "missing") from None
        try:
            if 4 * len(wanted) >= header.rows:  # many rows: one read of the whole file
                data = _pread_exact(fd, header.rows * header.row_bytes, header.offset, header.path)
                return np.frombuffer(data, dtype="<f4").reshape(header.rows, -1)[wanted]
            block = np.empty((len(wanted), header.row_bytes // 4), dtype=np.float32)
            for i, row in enumerate(wanted.tolist()):
                data = _pread_exact(fd, header.row_bytes, header.offset + row * header.row_bytes, header.path)
                block[i] = np.frombuffer(data, dtype="<f4")
            return block
        finally:
            os.close(fd)

    def close(self) -> None:
        with self._lock:
            self._headers.clear()
        self._verifier.forget()


def _pread_exact(fd: int, length: int, offset: int, path: Path) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise damaged(path, f"truncated: a read at byte {offset} found {len(data)} of {length} bytes")
    return data
