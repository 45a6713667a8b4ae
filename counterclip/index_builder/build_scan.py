"""Build stage 4, scan and diff: the folder against the rows of the work generation.

The folder is scanned into a temporary table; then, in one transaction with the run's settings, it is
diffed with the ``images`` rows: new files become ``pending`` rows (new ids, in path order), changed
files (size, mtime, then content hash) get a new id, deleted ones are removed (their vectors leave the
shards at compaction), files that could not be read for a passing reason are tried again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from counterclip.calibration import Calibration
from counterclip.errors import InputError
from counterclip.index_builder.build_plan import BuildPlan
from counterclip.index_builder.build_state import BuildState
from counterclip.index_builder.decode import file_sha256
from counterclip.index_builder.scan import display_path, scan_folder
from counterclip.index_builder.store import Store

LOG = logging.getLogger(__name__)
TRANSIENT_ERRORS = ("permission denied", "file disappeared")  # decode reasons retried by every run


@dataclass(frozen=True)
class Scanned:
    """What the scan found and the diff did."""

    diff: dict[str, int]  # scanned, added, changed, removed, unchanged
    sidecars: list[tuple[str, str]]  # (rel_stem, rel_path) of every caption sidecar (``NAME.txt``)


def scan_and_diff(
    state: BuildState, plan: BuildPlan, store: Store, user_calibration: Calibration | None
) -> Scanned:
    """Scan ``plan.root``, record the run's settings (and a user calibration) and apply the diff."""
    with state.timed("scan"):
        sidecars: list[tuple[str, str]] = []
        scan_to_temp(state, store, plan.root, sidecars)
        with store.transaction():
            store.set_meta(**plan.settings_meta())
            if user_calibration is not None:
                store.set_meta(user_calibration=user_calibration.to_dict())
            diff = apply_diff(store, plan.root)
    state.items_estimate = diff["scanned"] + store.count("captions", "indexed")
    return Scanned(diff, sidecars)


def scan_to_temp(state: BuildState, store: Store, root: Path, sidecars: list[tuple[str, str]]) -> None:
    """Scan the folder into the connection's temp table ``scan`` (the index itself is not touched)."""
    try:
        os.listdir(root)
    except OSError as exc:
        raise InputError(f"cannot read the image folder {root}: {exc.strerror or exc}") from None
    conn = store.conn
    conn.execute("DROP TABLE IF EXISTS temp.scan")
    conn.execute(
        "CREATE TEMP TABLE scan (path_key BLOB PRIMARY KEY, path TEXT NOT NULL, size INTEGER, "
        "mtime_ns INTEGER, error TEXT)"
    )
    task = state.progress.task("scanning", None, "files")

    def rows() -> Iterator[tuple[Any, ...]]:
        for entry in scan_folder(root, exclude=(state.index_dir,), sidecars=sidecars):
            state.progress.advance(task)
            yield entry.key, display_path(entry.rel), entry.size, entry.mtime_ns, entry.error

    with store.transaction():
        conn.executemany("INSERT OR REPLACE INTO scan VALUES (?, ?, ?, ?, ?)", rows())
    state.progress.done(task)
    scanned = conn.execute("SELECT COUNT(*) FROM scan").fetchone()[0]
    indexed = store.count("images", "indexed")
    state.items_estimate = max(state.items_estimate, int(scanned))  # for a disk-full message
    if scanned == 0 and indexed > 0:
        raise InputError(
            f"no image files under {root} any more, but the index holds {indexed} images; is the folder "
            f"(or its drive) missing? If they were really all deleted, remove {state.index_dir} and build again"
        )


def apply_diff(store: Store, root: Path) -> dict[str, int]:
    """Diff the temp table ``scan`` against ``images`` (call inside a transaction); returns the counts.

    New paths become ``pending`` rows with new ids (in path order); a file whose size or mtime moved
    is re-hashed when its size is unchanged, and only a different content gives it a new id; rows
    whose file is gone are deleted (their vectors leave the shards at compaction).
    """
    conn = store.conn
    scanned = conn.execute("SELECT COUNT(*) FROM scan").fetchone()[0]
    before = conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    gone = [
        r[0]
        for r in conn.execute(
            "SELECT i.id FROM images i LEFT JOIN scan s ON s.path_key = i.path_key WHERE s.path_key IS NULL"
        )
    ]
    replaced, touched = _changed(store, root)
    conn.executemany("UPDATE images SET mtime_ns = ? WHERE id = ?", touched)
    # Reading failures may be transient (permissions fixed, network share back): retry them, same id.
    conn.execute(
        "UPDATE images SET status = 'pending', error = NULL WHERE status = 'error' AND size IS NOT NULL "
        f"AND error IN ({', '.join('?' * len(TRANSIENT_ERRORS))})",
        TRANSIENT_ERRORS,
    )
    conn.executemany("DELETE FROM images WHERE id = ?", [(i,) for i in gone + replaced])
    conn.execute(
        "INSERT INTO images (path_key, path, size, mtime_ns, status, error) "
        "SELECT s.path_key, s.path, s.size, s.mtime_ns, "
        "CASE WHEN s.error IS NULL THEN 'pending' ELSE 'error' END, s.error "
        "FROM scan s LEFT JOIN images i ON i.path_key = s.path_key WHERE i.id IS NULL ORDER BY s.path_key"
    )
    inserted = conn.execute("SELECT changes()").fetchone()[0]
    conn.execute("DROP TABLE temp.scan")
    diff = {
        "scanned": int(scanned),
        "added": int(inserted) - len(replaced),
        "changed": len(replaced),
        "removed": len(gone),
        "unchanged": int(before) - len(gone) - len(replaced),
    }
    LOG.info("scan of %s: %s", root, diff)
    return diff


def _changed(store: Store, root: Path) -> tuple[list[int], list[tuple[int, int]]]:
    """Rows whose file's size, mtime or error moved: ``(replaced ids, [(new mtime, id)] of the touched)``;
    a file of the same size is re-hashed, and only a different content replaces its row."""
    candidates = store.conn.execute(
        "SELECT i.id, i.path_key, i.size, i.sha256, s.size, s.mtime_ns, s.error "
        "FROM images i JOIN scan s ON s.path_key = i.path_key "
        "WHERE NOT (i.size IS s.size AND i.mtime_ns IS s.mtime_ns AND (s.error IS NULL OR s.error IS i.error))"
    ).fetchall()
    replaced, touched = [], []
    for item_id, key, old_size, old_sha, size, mtime_ns, error in candidates:
        same = False
        if error is None and old_sha is not None and old_size == size:
            try:  # only the mtime moved (touch, copy): the content decides
                same = file_sha256(root / os.fsdecode(key)) == old_sha
            except OSError:
                same = False
        if same:
            touched.append((mtime_ns, item_id))
        else:
            replaced.append(item_id)
    return replaced, touched
