"""The report package's one way to write a file: atomically (temp file beside it, fsync, rename)."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

from PIL import Image

from counterclip._fileio import atomic_write
from counterclip.errors import InputError


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` (parent folders created) with the package's one atomic writer."""
    target = Path(path)
    if target.is_dir():
        raise InputError(f"cannot write {target}: it is a folder; give a file name inside it")
    if target.parent.exists() and not target.parent.is_dir():
        raise InputError(f"cannot write {target}: {target.parent} is a file, not a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(target, data)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """`write_bytes_atomic` of UTF-8 text."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def png_bytes(img: Image.Image) -> bytes:
    """``img`` encoded as PNG."""
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(img: Image.Image, path: str | os.PathLike[str]) -> Path:
    """Write ``img`` as PNG atomically (encoded first, so a failed encoding never touches ``path``)."""
    return write_bytes_atomic(path, png_bytes(img))


def png_data_uri(img: Image.Image) -> str:
    """``data:image/png;base64,...`` for embedding an image in a self-contained HTML page."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(img)).decode("ascii")
