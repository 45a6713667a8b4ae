"""Checksums of index files: size + xxh3-128 of the bytes, computed while writing or by reading a file.

xxh3 runs at several GB/s (blake2b at about 0.3 GB/s on the project's machines), so an index can be
verified completely when it is opened (SQLite, FAISS) or updated (everything), not only sampled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import xxhash

ALGORITHM = "xxh3_128"
_BLOCK = 1 << 22


@dataclass(frozen=True)
class Checksum:
    """What the manifest records about one file."""

    size: int  # bytes
    xxh3: str  # xxh3-128 hex digest of the bytes

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "xxh3": self.xxh3}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Checksum:
        return cls(int(data["size"]), str(data["xxh3"]))


def checksum_bytes(data: bytes | memoryview) -> Checksum:
    """Checksum of bytes in memory."""
    return Checksum(len(data), xxhash.xxh3_128_hexdigest(data))


def checksum_file(path: str | os.PathLike[str]) -> Checksum:
    """Checksum of a file's bytes, read in 4 MB blocks."""
    digest = xxhash.xxh3_128()
    size = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
            size += len(block)
    return Checksum(size, digest.hexdigest())


class HashingWriter:
    """A binary file wrapper that hashes what goes through ``write`` (for `atomic_write` callables)."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self._digest = xxhash.xxh3_128()
        self._size = 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._digest.update(view)
        self._size += len(view)
        return self._handle.write(view)

    def flush(self) -> None:
        self._handle.flush()

    def checksum(self) -> Checksum:
        return Checksum(self._size, self._digest.hexdigest())


def mismatch(path: Path, expected: Checksum) -> str | None:
    """Why ``path`` does not match ``expected`` (missing, truncated, grown, different bytes), or None."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if size != expected.size:
        return size_reason(size, expected.size)
    got = checksum_file(path)
    if got.size != expected.size:
        return size_reason(got.size, expected.size)
    if got.xxh3 != expected.xxh3:
        return f"checksum mismatch (xxh3 {got.xxh3[:12]}..., recorded {expected.xxh3[:12]}...)"
    return None


def size_reason(size: int, expected: int) -> str:
    """One phrase for a file of the wrong size."""
    what = "truncated" if size < expected else "longer than recorded"
    return f"{what}: {size} bytes, recorded {expected}"
