"""The ONNX cache on disk: ``ROOT/<fingerprint>/<tower>.<precision>.onnx`` with a JSON record beside each.

Both files are written atomically (temp file in the same directory, fsync, rename), the record last, so a
crash or two processes exporting at once never leave a record that names a partial file. The record
holds the file's xxh3-128: a cached file whose bytes differ (damaged, or replaced keeping its size) is
not used; it is exported again, and a warning line says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from counterclip.models.onnx_common import CACHE_FORMAT

LOG = logging.getLogger(__name__)
_PIECE = 1 << 22


def file_digest(path: Path) -> str:
    """The xxh3-128 hex digest of a file's bytes (read in 4 MB pieces; several GB/s)."""
    digest = xxhash.xxh3_128()
    with open(path, "rb") as handle:
        for piece in iter(lambda: handle.read(_PIECE), b""):
            digest.update(piece)
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it is fsynced and renamed over ``path``, else deleted.

    The temp name is unique, so two processes exporting the same tower at once each write their own file
    and the last rename wins (the exports are equal).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")


def sha256_array(array: np.ndarray) -> str:
    """A short digest of an array's shape, dtype and bytes (which sample an int8 tower was checked on)."""
    digest = hashlib.sha256(str((array.shape, str(array.dtype))).encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:32]


class OnnxCache:
    """``ROOT/<fingerprint>/``: one ``<tower>.<precision>.onnx`` and its ``.json`` record per exported tower.

    A record is valid when it names this fingerprint, tower, precision and cache format and its ONNX file
    has the recorded size and hash; anything else is treated as absent (and re-exported).
    """

    def __init__(self, root: Path, fingerprint: str) -> None:
        self.root = Path(root)
        self.fingerprint = fingerprint
        self.directory = self.root / fingerprint

    def onnx_path(self, tower: str, precision: str) -> Path:
        return self.directory / f"{tower}.{precision}.onnx"

    def record_path(self, tower: str, precision: str) -> Path:
        return self.directory / f"{tower}.{precision}.json"

    def read(self, tower: str, precision: str) -> dict[str, Any] | None:
        """The record of a cached tower, or None when it is missing, stale or damaged."""
        path = self.record_path(tower, precision)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        expected = {
            "format": CACHE_FORMAT,
            "fingerprint": self.fingerprint,
            "tower": tower,
            "precision": precision,
        }
        if not isinstance(record, dict) or any(record.get(k) != v for k, v in expected.items()):
            return None
        onnx_file = self.onnx_path(tower, precision)
        if not onnx_file.is_file():
            return None
        if onnx_file.stat().st_size != record.get("bytes") or file_digest(onnx_file) != record.get("xxh3"):
            LOG.warning(
                "ONNX cache: %s is not the file its record describes (damaged or replaced): exporting it again",
                onnx_file,
            )
            return None
        return record

    def discard(self, tower: str, precision: str) -> None:
        """Remove a cached tower (its record first: a record never names a missing file)."""
        self.record_path(tower, precision).unlink(missing_ok=True)
        self.onnx_path(tower, precision).unlink(missing_ok=True)

    def write_record(self, tower: str, precision: str, record: dict[str, Any]) -> dict[str, Any]:
        """Complete and write the record of an ONNX file already in place; returns it."""
        full = {
            "format": CACHE_FORMAT,
            "fingerprint": self.fingerprint,
            "tower": tower,
            "precision": precision,
            "file": self.onnx_path(tower, precision).name,
            "bytes": self.onnx_path(tower, precision).stat().st_size,
            "xxh3": file_digest(self.onnx_path(tower, precision)),
            **record,
        }
        _write_json(self.record_path(tower, precision), full)
        return full
