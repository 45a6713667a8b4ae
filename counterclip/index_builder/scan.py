"""Recursive folder scan: which files are images, which are caption sidecars, which cannot be read.

Images are files with an extension Pillow reads here (`IMAGE_EXTENSIONS`: JPEG in all its spellings,
PNG, WebP, GIF, BMP, TIFF, ICO, TGA, the PPM family, PCX, PSD, QOI, and AVIF / JPEG 2000 when this
Pillow has them). Files with the extension of an image format Pillow cannot read here (HEIC, JPEG XL,
SVG, camera raw...) are reported as skipped with that reason, never silently ignored; other files
(documents, sidecars, videos) are not images and are not listed.

Deterministic (directory entries sorted), hidden files and folders skipped, directory symlinks followed
once (a symlink loop is visited only once), file symlinks followed (a loop or a dangling link is reported,
not raised). A symlink (to a file or a folder) whose target lies outside the root is never followed: it is
reported as skipped, so an index never holds, and a server never serves, a file from outside its folder. Paths are relative to the root, "/"-separated; names that are not valid UTF-8 are kept
losslessly (``os.fsdecode`` form, with the raw bytes as the database key).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LOG = logging.getLogger(__name__)

_PILLOW_CANDIDATES = (  # image formats to index when this Pillow can open them (decided at import)
    ".jpg .jpeg .jpe .jfif .png .apng .webp .bmp .dib .gif .tif .tiff .ico .tga .ppm .pgm .pbm .pnm "
    ".pcx .psd .qoi .avif .avifs .jp2 .j2k .jpx .jpf .j2c"
).split()
_FEATURES = {".avif": "avif", ".avifs": "avif", ".jp2": "jpg_2000", ".j2k": "jpg_2000", ".jpx": "jpg_2000"}
_FEATURES.update({".jpf": "jpg_2000", ".j2c": "jpg_2000", ".webp": "webp", ".jpg": "jpg", ".jpeg": "jpg"})
_OTHER_IMAGE_FORMATS = (  # image formats Pillow cannot decode (reported, not indexed)
    ".heic .heif .hif .jxl .svg .svgz .eps .ai .exr .hdr .xcf .raw .dng .cr2 .cr3 .crw .nef .nrw .arw "
    ".srf .sr2 .orf .rw2 .raf .pef .srw .x3f .3fr .erf .kdc .mos .mrw .iiq"
).split()
SIDECAR_EXTENSION = ".txt"


def _pillow_reads(ext: str) -> bool:
    """Pillow has a decoder for files named ``*ext`` here (plugin registered, codec compiled in)."""
    from PIL import Image, features

    Image.init()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.OPEN:
        return False
    feature = _FEATURES.get(ext)
    try:
        return feature is None or bool(features.check(feature))
    except ValueError:
        return False


IMAGE_EXTENSIONS = frozenset(e for e in _PILLOW_CANDIDATES if _pillow_reads(e))  # indexed
UNSUPPORTED_EXTENSIONS = frozenset(set(_OTHER_IMAGE_FORMATS) | (set(_PILLOW_CANDIDATES) - IMAGE_EXTENSIONS))


def unsupported_reason(ext: str) -> str:
    """The reason stored for a file of an image format this Pillow cannot decode."""
    return f"unsupported image format ({ext}): Pillow cannot decode it here; convert it to JPEG or PNG"


@dataclass(frozen=True)
class ScanEntry:
    """One candidate image (or an unreadable thing named like one)."""

    rel: str  # path relative to the root, "/"-separated, os.fsdecode form
    size: int | None  # bytes (None when it could not be stat'ed)
    mtime_ns: int | None  # modification time in ns (None when it could not be stat'ed)
    error: str | None = None  # why it cannot be indexed, found at scan time (None = try to decode)

    @property
    def key(self) -> bytes:
        """The lossless database key: the raw bytes of `rel`."""
        return os.fsencode(self.rel)


def display_path(rel: str) -> str:
    """A printable form of a path whose name may not be valid UTF-8 (undecodable bytes escaped)."""
    return os.fsencode(rel).decode("utf-8", "backslashreplace")


def is_hidden(name: str) -> bool:
    """Dot-files and dot-folders (also macOS ``._*`` resource forks) are skipped."""
    return name.startswith(".")


def _stat_error(exc: OSError, is_link: bool) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno == errno.ENOENT:
        return "broken symlink (target does not exist)" if is_link else "file disappeared during the scan"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return f"cannot stat: {exc.strerror or exc}"


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def scan_folder(
    root: Path, exclude: tuple[Path, ...] = (), sidecars: list[tuple[str, str]] | None = None
) -> Iterator[ScanEntry]:
    """Walk ``root`` and yield one `ScanEntry` per image-named file, in sorted path order per directory.

    Args:
        root: the image folder (absolute).
        exclude: directories never entered (e.g. the index directory when it sits inside the folder).
        sidecars: when given, ``(rel_stem, rel_path)`` of every ``NAME.txt`` found is appended to it.

    Yields:
        ScanEntry, with ``error`` set for things that cannot be images (FIFOs, dangling links, loops,
        unreadable directories).
    """
    excluded = {_identity(p) for p in exclude if p.exists()}
    real_root = os.path.realpath(root)
    visited: set[tuple[int, int]] = set()
    stack: list[tuple[Path, str]] = [(root, "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            ident = _identity(directory)
        except OSError:
            continue
        if ident in visited or ident in excluded:
            LOG.debug("skipping %s (already visited or excluded)", directory)
            continue
        visited.add(ident)
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: os.fsencode(e.name))
        except OSError as exc:
            if prefix:  # the root itself is checked by the caller
                reason = "permission denied" if exc.errno in (errno.EACCES, errno.EPERM) else str(exc)
                yield ScanEntry(prefix.rstrip("/"), None, None, f"cannot read directory: {reason}")
            continue
        subdirs: list[tuple[Path, str]] = []
        for entry in entries:
            if is_hidden(entry.name):
                continue
            found = _classify(entry, prefix + entry.name, real_root, sidecars, subdirs)
            if found is not None:
                yield found
        # Depth-first in sorted order: push in reverse so the first subdirectory is walked first.
        stack.extend(reversed(subdirs))


def _classify(
    entry: os.DirEntry,
    rel: str,
    real_root: str,
    sidecars: list[tuple[str, str]] | None,
    subdirs: list[tuple[Path, str]],
) -> ScanEntry | None:
    """What a directory entry is: an image (or an unreadable thing named like one) to list, a folder to
    walk (appended to ``subdirs``), a sidecar (appended to ``sidecars``), or nothing of ours (None)."""
    ext = os.path.splitext(entry.name)[1].lower()
    try:
        is_dir = entry.is_dir(follow_symlinks=True)
    except OSError:
        is_dir = False
    if is_dir:
        outside = _outside(entry, real_root) if entry.is_symlink() else None
        if outside:
            return ScanEntry(rel, None, None, outside)
        subdirs.append((Path(entry.path), rel + "/"))
        return None
    if ext == SIDECAR_EXTENSION:
        if sidecars is not None and entry.is_file(follow_symlinks=True):
            sidecars.append((os.path.splitext(rel)[0], rel))
        return None
    if ext in UNSUPPORTED_EXTENSIONS:
        # no size or mtime: if a later Pillow reads the format, the row counts as changed
        if entry.is_file(follow_symlinks=True):
            return ScanEntry(rel, None, None, unsupported_reason(ext))
        return None
    if ext not in IMAGE_EXTENSIONS:
        return None
    is_link = entry.is_symlink()
    try:
        st = entry.stat(follow_symlinks=True)
    except OSError as exc:
        return ScanEntry(rel, None, None, _stat_error(exc, is_link))
    if not stat.S_ISREG(st.st_mode):
        return ScanEntry(rel, None, None, f"not a regular file ({_kind(st.st_mode)})")
    outside = _outside(entry, real_root) if is_link else None
    if outside:
        return ScanEntry(rel, None, None, outside)
    return ScanEntry(rel, st.st_size, st.st_mtime_ns)


def _outside(entry: os.DirEntry, real_root: str) -> str | None:
    """The skip reason when ``entry`` resolves (through symlinks, its own or a parent folder's) to a path
    outside the root; None when it stays inside."""
    real = os.path.realpath(entry.path)
    if real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep):
        return None
    return "symlink to a path outside the indexed folder (not followed)"


def _identity(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino)
