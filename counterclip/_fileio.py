"""Crash-safe file writes, used by every part of counterclip that writes a file a reader may open.

One helper, `atomic_write`: readers see the old file or the whole new one, never a torn one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TMP_SUFFIX = ".tmp"  # a crash leaves at most ``NAME.tmp``; index builds delete such debris


def fsync_dir(directory: Path) -> None:
    """Make renames inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: bytes | str | Callable[[BinaryIO], object]) -> Path:
    """Write ``path`` so that readers see the old file or the whole new one.

    Args:
        path: the file to (re)place.
        data: bytes, text (written as UTF-8), or a function that writes to the open binary file.

    The bytes go to ``NAME.tmp`` beside it, are fsynced, renamed over ``path``, and the directory is
    fsynced. On an error the temp file is removed and the old file stays as it was.

    Returns:
        ``path`` as a `Path`.
    """
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    fsync_dir(path.parent)
    return path


def remove_durably(path: Path) -> None:
    """Delete ``path`` if present and fsync its directory."""
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fsync_dir(path.parent)
