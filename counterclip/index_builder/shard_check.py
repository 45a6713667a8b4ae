"""Checksums of embedding shards checked as their rows are first read (by `shards.ShardReader`).

A unit-length check cannot see a flipped sign bit (the row stays unit length, its scores change), so
before a row is used the blocks of the file holding it are compared with the xxh3-64 the manifest
records for each `BLOCK_BYTES` block, once per block and reader. A mismatch is an `IndexDamagedError`
naming the file and the block, never a score. Indexes written before block checksums were recorded are
checked against their whole-file checksum instead, once per shard and reader (an update adds the block
checksums); a file with no checksum at all (the first index format) keeps the unit-length check alone.

Cost (`scripts/check_damage.py` measures it, 4 MB shards, warm cache): the first row read from a shard
takes ~72 us against ~47 us unchecked (one 64 kB block hashed), later rows of a checked block nothing
more; a whole-file check costs ~270 us per 4 MB shard on first read.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from counterclip.errors import IndexDamagedError
from counterclip.index_builder.checksums import Checksum, block_digest, mismatch, size_reason
from counterclip.index_builder.manifest import damaged_error

WHOLE_FILE = -1  # the key of a shard checked against its whole-file checksum


class ShardVerifier:
    """Which blocks of each shard file a reader has checked, and the checks.

    Args:
        checksums: the recorded checksums by file name relative to the index (``embeddings/...``); a
            file missing from them is not checked here. Default: none.
    """

    def __init__(self, checksums: Mapping[str, Checksum] | None = None) -> None:
        self.checksums = dict(checksums or {})
        self._checked: dict[str, set[int]] = {}
        self._lock = threading.Lock()

    def check_rows(self, path: Path, name: str, offset: int, row_bytes: int, rows: np.ndarray) -> None:
        """Check the blocks of ``path`` holding ``rows`` (data starting at byte ``offset``) before they
        are used, unless checked already.

        Raises:
            IndexDamagedError: a block (or, without block checksums, the file) unlike its record.
        """
        expected = self.checksums.get(name)
        if expected is None or not len(rows):
            return
        checked = self._checked.setdefault(name, set())
        if expected.blocks is None:
            if WHOLE_FILE not in checked:
                reason = mismatch(path, expected)
                if reason is not None:
                    raise _damaged(path, reason)
                with self._lock:
                    checked.add(WHOLE_FILE)
            return
        size = expected.block_bytes or 1
        starts = offset + rows.astype(np.int64) * row_bytes
        first, last = starts // size, (starts + row_bytes - 1) // size
        wanted = set(np.unique(np.concatenate([first, last])).tolist())
        for low, high in zip(first.tolist(), last.tolist(), strict=True):  # rows wider than a block
            wanted.update(range(low + 1, high))
        todo = sorted(wanted - checked)
        if todo:
            self._check_blocks(path, expected, todo)
            with self._lock:
                checked.update(todo)

    def _check_blocks(self, path: Path, expected: Checksum, blocks: list[int]) -> None:
        size = expected.block_bytes or 1
        if blocks[-1] >= expected.block_count:
            raise _damaged(path, f"block {blocks[-1]} asked, {expected.block_count} recorded")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise _damaged(path, "missing") from None
        try:
            actual = os.fstat(fd).st_size
            if actual != expected.size:
                raise _damaged(path, size_reason(actual, expected.size))
            for run_start, run_end in _runs(blocks):
                begin = run_start * size
                data = os.pread(fd, min(run_end * size, expected.size) - begin, begin)
                view = memoryview(data)
                for number in range(run_start, run_end):
                    piece = view[(number - run_start) * size : (number - run_start + 1) * size]
                    if block_digest(piece) != expected.block(number):
                        end = number * size + len(piece)
                        raise _damaged(
                            path, f"block {number} (bytes {number * size}-{end}) does not match its checksum"
                        )
        finally:
            os.close(fd)

    def forget(self) -> None:
        with self._lock:
            self._checked.clear()


def _runs(blocks: list[int]) -> list[tuple[int, int]]:
    """Sorted block numbers -> ``[start, end)`` runs of consecutive ones."""
    runs: list[tuple[int, int]] = []
    for number in blocks:
        if runs and runs[-1][1] == number:
            runs[-1] = (runs[-1][0], number + 1)
        else:
            runs.append((number, number + 1))
    return runs


def _damaged(path: Path, reason: str) -> IndexDamagedError:
    return damaged_error(path.parent.parent, f"{path.parent.name}/{path.name}", reason)
