"""Where imported images come from (`interop`): read back by `Index` and refused by `update`.

An index imported from clip-retrieval output has a table `SOURCES_TABLE` in its SQLite file: per image
its original ``image_path``, its ``url``, whether the file is on this machine, and the partition row it
came from. A folder-built index has no such table. This module imports nothing of the builder or the
index, so both can call it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from counterclip.errors import IndexFormatError

SOURCES_TABLE = "item_sources"  # per imported image: image_path, url, has_file, origin
SOURCES_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {SOURCES_TABLE} (
    id INTEGER PRIMARY KEY,      -- images.id
    image_path TEXT,             -- the metadata's image_path, as given
    url TEXT,                    -- the metadata's url
    has_file INTEGER NOT NULL,   -- 1 when the file is on this machine (re-scored from it), else 0
    origin TEXT NOT NULL         -- partition and row it was imported from, e.g. "00003:17"
);
"""


def has_sources(conn_query: Any) -> bool:
    """Whether an index's SQLite file has the `SOURCES_TABLE` (it was imported)."""
    rows = conn_query("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?", (SOURCES_TABLE,))
    return bool(rows)


def item_sources(conn_query: Any, ids: list[int]) -> dict[int, tuple[str | None, str | None, bool]]:
    """``{id: (image_path, url, has_file)}`` of imported images (ids not imported are absent)."""
    out: dict[int, tuple[str | None, str | None, bool]] = {}
    unique = sorted(set(ids))
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        marks = ",".join("?" * len(chunk))
        for item_id, image_path, url, has_file in conn_query(
            f"SELECT id, image_path, url, has_file FROM {SOURCES_TABLE} WHERE id IN ({marks})", chunk
        ):
            out[int(item_id)] = (image_path, url, bool(has_file))
    return out


def refuse_update_of_import(index_dir: Path, recorded: dict[str, Any] | None) -> None:
    """An imported index has no folder to scan: `update` would drop every image. Refuse it."""
    if recorded:
        raise IndexFormatError(
            f"index {index_dir} was imported from clip-retrieval output {recorded.get('dir')}; it has no image "
            "folder to update from: import the new output into a new index"
        )
