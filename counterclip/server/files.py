"""Files the server reads: indexed images (by id only, checked), and uploaded images (limits first).

An indexed image is served only when (1) its id is in the index, (2) the real path of the file, after
every symlink, lies inside the index's real root, checked again on the opened descriptor, and (3) its
size and modification time still equal what the index recorded. Anything else is a 404 whose reason is
logged, never told: a caller learns nothing about files outside the index.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import logging
import os
import stat
import threading
from collections.abc import Iterator
from typing import Any

from PIL import Image

from counterclip.index_builder.decode import (
    DecodeError,
    DecodeOptions,
    ImageTooLarge,
    LoadedImage,
    load_bytes,
)
from counterclip.server.admission import reserve
from counterclip.server.settings import Limits

LOG = logging.getLogger(__name__)
CHUNK = 256 * 1024
_MTIME_TOLERANCE = 2e-6  # seconds: the index stores mtime_ns / 1e9 as a float


class NotServed(Exception):
    """An image id the server will not read (unknown, outside the root, changed since indexing).
    ``str(exc)`` is for the log; callers get a plain 404."""


class UploadError(Exception):
    """An uploaded image that is refused: ``status`` (413 too large, 422 unreadable) and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def image_meta(index: Any, image_id: int) -> dict[str, Any]:
    """The index's metadata of one image; `NotServed` when the id is unknown."""
    try:
        meta = index.images.meta([image_id])
    except (KeyError, IndexError, OverflowError, ValueError):
        meta = []
    if not meta:
        raise NotServed(f"image id {image_id} is not in the index")
    return meta[0]


def open_indexed(index: Any, image_id: int) -> tuple[int, int, dict[str, Any]]:
    """Open an indexed image for reading after the checks above.

    Returns:
        ``(file descriptor, size in bytes, metadata)``; the caller closes the descriptor.

    Raises:
        NotServed: unknown id, a path that resolves outside the root, not a regular file, or a file whose
            size or mtime changed since it was indexed.
    """
    meta = image_meta(index, image_id)
    if meta.get("has_file") is False:  # imported (clip-retrieval) without its file on this machine
        where = f" (its url: {meta['url']})" if meta.get("url") else ""
        raise NotServed(
            f"image id {image_id} was imported without its file; there is nothing to serve{where}"
        )
    if meta.get("size") is None or meta.get("mtime") is None:
        raise NotServed(f"image id {image_id}: the index records no size/mtime to check the file against")
    root = os.path.realpath(index.root)
    real = os.path.realpath(os.path.join(index.root, meta["path"]))
    if not _inside(real, root):
        raise NotServed(f"image id {image_id} ({meta['path']!r}) resolves outside the indexed folder: {real}")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC)
    except OSError as exc:
        raise NotServed(f"image id {image_id} ({meta['path']!r}): {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotServed(f"image id {image_id} ({meta['path']!r}) is no longer a regular file")
        opened = _fd_path(fd)
        if opened is not None and not _inside(opened, root):  # swapped between the check and the open
            raise NotServed(
                f"image id {image_id} ({meta['path']!r}) opened outside the indexed folder: {opened}"
            )
        if st.st_size != meta["size"] or abs(st.st_mtime_ns / 1e9 - meta["mtime"]) > _MTIME_TOLERANCE:
            raise NotServed(
                f"image id {image_id} ({meta['path']!r}) changed since it was indexed "
                f"(size {st.st_size} vs {meta['size']}); run `counterclip update`"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size, meta


def _fd_path(fd: int) -> str | None:
    """The path the kernel holds for an open descriptor (Linux); None where the OS does not tell."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def stream_fd(fd: int, size: int) -> Iterator[bytes]:
    """Yield the file's bytes in chunks (at most ``size``: a file growing meanwhile is cut), then close it."""
    try:
        left = size
        while left > 0:
            chunk = os.read(fd, min(CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
    finally:
        os.close(fd)


def read_indexed(index: Any, image_id: int) -> tuple[bytes, dict[str, Any]]:
    """The checked bytes of an indexed image and its metadata."""
    fd, size, meta = open_indexed(index, image_id)
    return b"".join(stream_fd(fd, size)), meta


def decode_options(index: Any) -> DecodeOptions:
    """How the index decoded its files (so the same bytes give the same pixels here)."""
    return getattr(index, "decode_options", None) or DecodeOptions()


def load_indexed(index: Any, image_id: int, full_resolution: bool = False) -> Image.Image:
    """The checked, decoded image of an index id: the pixels the index embedded, or with
    ``full_resolution`` the file's own size (for maps people look at)."""
    data, meta = read_indexed(index, image_id)
    options = decode_options(index)
    if full_resolution:
        options = dataclasses.replace(options, min_side=None)
    try:
        return load_bytes(data, options).image
    except DecodeError as exc:
        raise NotServed(f"image id {image_id} ({meta['path']!r}) no longer decodes: {exc}") from None


def decode_upload(value: str, limits: Limits, index: Any) -> LoadedImage:
    """A base64 upload (optionally a ``data:`` URL) -> decoded image, limits checked before decoding.

    The byte limit is checked on the base64 length before decoding it, the pixel and side limits on the
    image header before decoding pixels (`load_bytes`), with the index's own decoding rules otherwise.

    Raises:
        UploadError: 413 when over a limit, 422 when not base64 or not a readable image.
    """
    if value.startswith("data:"):
        value = value.partition(",")[2]
    most = 4 * ((limits.max_upload_bytes + 2) // 3) + 4
    if len(value) > most:
        raise UploadError(
            413, f"the uploaded file is larger than the limit of {_size(limits.max_upload_bytes)}"
        )
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UploadError(422, f"the upload did not arrive as a file (not valid base64: {exc})") from None
    _reserve_decoded(data, limits)
    base = decode_options(index)
    options = dataclasses.replace(
        base,
        max_file_bytes=min(base.max_file_bytes, limits.max_upload_bytes),
        max_pixels=min(base.max_pixels, limits.max_upload_pixels),
        max_side=min(base.max_side, limits.max_upload_side),
    )
    try:
        return load_bytes(data, options)
    except ImageTooLarge as exc:
        raise UploadError(413, f"the uploaded image is over a limit: {exc}") from None
    except DecodeError as exc:
        raise UploadError(
            422, f"the uploaded file is not a usable image: {exc}; upload a PNG, JPEG, WebP, BMP, GIF or TIFF"
        ) from None


def _size(count: int) -> str:
    """A byte count as a person reads it: bytes below a megabyte, else MB."""
    return f"{count} bytes" if count < 1024 * 1024 else f"{count / (1024 * 1024):.1f} MB"


def decoded_bytes(width: int, height: int, mode: str) -> int:
    """Bytes an upload of this header holds once decoded: its RGB pixels (3 per pixel), plus the
    decoder's own buffer when the file is not RGB (one to four bytes per pixel)."""
    own = {"1": 1, "L": 1, "P": 1, "LA": 2, "I;16": 2, "RGBA": 4, "CMYK": 4, "I": 4, "F": 4}.get(mode, 0)
    return width * height * (3 + own)


def _reserve_decoded(data: bytes, limits: Limits) -> None:
    """Reserve an upload's decoded size from the request's memory budget before decoding it (503 when it
    does not fit); a header over the pixel limits is left to the decoder, which refuses it (413)."""
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height, mode = header.width, header.height, header.mode
    except Exception:  # noqa: BLE001 - not an image: the decoder says why (422)
        return
    if width * height > limits.max_upload_pixels or max(width, height) > limits.max_upload_side:
        return
    reserve(decoded_bytes(width, height, mode), f"an upload of {width} x {height} pixels")


class IndexLookup:
    """What the page shows beside ids, computed once on first use: the captions linked to each image,
    and the id of an indexed file by its content hash (an upload of an indexed file is that image)."""

    MAX_ITEMS = 1_000_000  # above this many captions / images a lookup table is not built

    def __init__(self, index: Any) -> None:
        self.index = index
        self._lock = threading.Lock()
        self._captions: dict[int, list[str]] | None = None
        self._by_sha: dict[str, int] | None = None

    def captions_of(self, image_id: int, most: int = 3) -> list[str]:
        with self._lock:
            if self._captions is None:
                self._captions = self._build_captions()
        return self._captions.get(int(image_id), [])[:most]

    def id_for_sha256(self, sha256: str) -> int | None:
        with self._lock:
            if self._by_sha is None:
                self._by_sha = self._build_sha()
        return self._by_sha.get(sha256)

    def _build_captions(self) -> dict[int, list[str]]:
        ids = self.index.captions.ids
        table: dict[int, list[str]] = {}
        if len(ids) > self.MAX_ITEMS:
            return table
        for start in range(0, len(ids), 5000):
            for meta in self.index.captions.meta(ids[start : start + 5000]):
                linked = meta.get("image_ids") or (
                    [meta["image_id"]] if meta.get("image_id") is not None else []
                )
                for image_id in linked:
                    table.setdefault(int(image_id), []).append(meta["text"])
        return table

    def _build_sha(self) -> dict[str, int]:
        ids = self.index.images.ids
        table: dict[str, int] = {}
        if len(ids) > self.MAX_ITEMS:
            return table
        for start in range(0, len(ids), 5000):
            for meta in self.index.images.meta(ids[start : start + 5000]):
                if meta.get("sha256"):
                    table.setdefault(meta["sha256"], int(meta["id"]))
        return table


def describe_image(meta: dict[str, Any], captions: list[str]) -> dict[str, Any]:
    """What the page shows for one image: id, path, file name, size in pixels, captions, and for an image
    imported without its file ``has_file`` False and its ``url``."""
    return {
        "id": int(meta["id"]),
        "path": meta["path"],
        "name": os.path.basename(meta["path"]),
        "width": meta.get("width"),
        "height": meta.get("height"),
        "captions": captions,
        "has_file": meta.get("has_file", True),  # False: imported without its file (see url)
        "url": meta.get("url"),
    }
