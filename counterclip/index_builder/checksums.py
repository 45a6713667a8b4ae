"""Checksums of index files: size + xxh3-128 of the bytes, computed while writing or by reading a file;
for embedding shards also one xxh3-64 per block of `BLOCK_BYTES`, so a reader that needs a few rows
checks the blocks holding them, not the whole file.

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
BLOCK_ALGORITHM = "xxh3_64"
BLOCK_BYTES = 64 * 1024  # bytes per checked block of a shard (see `block_sums` for the measured cost)
_BLOCK = 1 << 22
_HEX = 16  # hex digits of one block's xxh3-64


@dataclass(frozen=True)
class Checksum:
    """What the manifest records about one file: size and xxh3-128, and for an embedding shard the
    xxh3-64 of each `BLOCK_BYTES` block (``blocks``: the hex digests run together; None when not
    recorded, as in indexes written before them)."""

    size: int  # bytes
    xxh3: str  # xxh3-128 hex digest of the bytes
    blocks: str | None = None  # xxh3-64 hex digest of each block, in order, concatenated
    block_bytes: int | None = None  # bytes per block (the last one may be shorter)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"size": self.size, "xxh3": self.xxh3}
        if self.blocks is not None:
            out.update(block_bytes=self.block_bytes, blocks=self.blocks)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Checksum:
        blocks = data.get("blocks")
        if blocks is None:
            return cls(int(data["size"]), str(data["xxh3"]))
        return cls(int(data["size"]), str(data["xxh3"]), str(blocks), int(data["block_bytes"]))

    def block(self, number: int) -> str:
        """The recorded xxh3-64 of block ``number``."""
        assert self.blocks is not None
        return self.blocks[_HEX * number : _HEX * (number + 1)]

    @property
    def block_count(self) -> int:
        return len(self.blocks) // _HEX if self.blocks is not None else 0


def block_digest(data: bytes | memoryview) -> str:
    """The xxh3-64 hex digest of one block."""
    return xxhash.xxh3_64_hexdigest(data)


def checksum_bytes(data: bytes | memoryview) -> Checksum:
    """Checksum of bytes in memory."""
    return Checksum(len(data), xxhash.xxh3_128_hexdigest(data))


def checksum_file(path: str | os.PathLike[str], blocks: bool = False) -> Checksum:
    """Checksum of a file's bytes, read in 4 MB pieces; with ``blocks``, also its `BLOCK_BYTES` blocks'."""
    writer = HashingWriter(None, blocks=blocks)
    with open(path, "rb") as handle:
        for piece in iter(lambda: handle.read(_BLOCK), b""):
            writer.write(piece)
    return writer.checksum()


class HashingWriter:
    """A binary file wrapper that hashes what goes through ``write`` (for `atomic_write` callables);
    with ``blocks``, also each `BLOCK_BYTES` block. ``handle`` None: hash only."""

    def __init__(self, handle: BinaryIO | None, blocks: bool = False) -> None:
        self._handle = handle
        self._digest = xxhash.xxh3_128()
        self._size = 0
        self._blocks: list[str] | None = [] if blocks else None
        self._block = xxhash.xxh3_64()
        self._in_block = 0  # bytes of the current block hashed so far

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._digest.update(view)
        self._size += len(view)
        if self._blocks is not None:
            self._hash_blocks(view)
        return self._handle.write(view) if self._handle is not None else len(view)

    def _hash_blocks(self, view: memoryview) -> None:
        assert self._blocks is not None
        while len(view):
            take = min(BLOCK_BYTES - self._in_block, len(view))
            self._block.update(view[:take])
            self._in_block += take
            view = view[take:]
            if self._in_block == BLOCK_BYTES:
                self._blocks.append(self._block.hexdigest())
                self._block.reset()
                self._in_block = 0

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.flush()

    def checksum(self) -> Checksum:
        if self._blocks is None:
            return Checksum(self._size, self._digest.hexdigest())
        tail = [self._block.hexdigest()] if self._in_block else []
        return Checksum(self._size, self._digest.hexdigest(), "".join(self._blocks + tail), BLOCK_BYTES)


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
