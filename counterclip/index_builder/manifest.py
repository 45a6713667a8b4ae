"""``manifest.json``: the index's table of contents, written last and atomically.

Its presence is what makes an index valid: a build removes it before changing anything and writes it
again only when every other file is complete, so an interrupted build is never opened as valid. Its
``generation`` must equal the one in ``items.sqlite``, which catches files mixed from two builds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from counterclip.errors import IndexFormatError
from counterclip.index_builder._fs import atomic_write_bytes, remove_durably

MANIFEST_NAME = "manifest.json"
FORMAT = "counterclip-index"
FORMAT_VERSION = 1


def write_manifest(index_dir: Path, payload: dict[str, Any]) -> None:
    """Write ``manifest.json`` atomically (temp file, fsync, rename)."""
    body = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    atomic_write_bytes(
        index_dir / MANIFEST_NAME, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()
    )


def invalidate_manifest(index_dir: Path) -> None:
    """Remove the manifest (durably) before the first change of a build."""
    remove_durably(index_dir / MANIFEST_NAME)


def read_manifest(index_dir: Path) -> dict[str, Any]:
    """Parse and check ``manifest.json``; `IndexFormatError` when missing, unparsable or of another format."""
    path = index_dir / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexFormatError(
            f"index {index_dir} is incomplete (no manifest.json: a build was interrupted or is running); "
            f"run `counterclip update {index_dir}` to finish it"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexFormatError(f"index {index_dir}: manifest.json is unreadable ({exc})") from None
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt != FORMAT:
        raise IndexFormatError(f"{index_dir} is not a counterclip index (manifest format {fmt!r})")
    if data.get("format_version") != FORMAT_VERSION:
        raise IndexFormatError(
            f"index {index_dir} has format version {data.get('format_version')}, this counterclip reads "
            f"version {FORMAT_VERSION}; rebuild it with `counterclip build`"
        )
    return data
