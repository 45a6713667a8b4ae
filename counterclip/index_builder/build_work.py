"""Build stage 3, the work generation: ``items-(G+1).sqlite`` made (or resumed) beside G, and at the end
the old generations retired.

From here on files are written, none that a reader of G uses: the items file is a copy of G's (or a
fresh file) made under a temporary name and renamed; debris of interrupted runs is deleted, files a
manifest lists never; with ``repair`` the rows of damaged shards become ``pending`` again and damaged
FAISS files are forgotten, so the next stages rebuild them.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from pathlib import Path

from counterclip._fileio import fsync_dir
from counterclip.index_builder.build_base import Base
from counterclip.index_builder.build_state import BuildState
from counterclip.index_builder.generations import collect_garbage, published_files, remove_debris
from counterclip.index_builder.manifest import EMBEDDINGS_DIR, KINDS, LEGACY_DB_NAME, LEGACY_FILES
from counterclip.index_builder.shards import shard_names
from counterclip.index_builder.store import Store

LOG = logging.getLogger(__name__)
SQLITE_SIDECARS = ("-wal", "-shm", "-journal")


def open_work(state: BuildState, base: Base) -> Store:
    """The work generation's items file, open, with debris removed and repairs applied."""
    assert state.work_path is not None
    state.emb_dir.mkdir(exist_ok=True)
    if not base.resume:
        discard(state.work_path)
        create_work_db(state, base)
    state.published = published_files(state.index_dir)
    store = Store(state.work_path)
    try:
        _remove_work_debris(state, store)
        if base.damage and not base.rebuild_all:
            apply_repairs(state, store, base.damage)
    except BaseException:
        store.close()
        raise
    return store


def discard(path: Path) -> None:
    """Remove an items file in progress that cannot be resumed (and its WAL)."""
    for suffix in ("", *SQLITE_SIDECARS, ".tmp"):
        (path.parent / (path.name + suffix)).unlink(missing_ok=True)


def create_work_db(state: BuildState, base: Base) -> None:
    """``items-(G+1).sqlite``: a copy of G's (or a fresh file), made under a temp name and renamed."""
    assert state.work_path is not None
    located = base.located
    tmp = state.work_path.with_name(state.work_path.name + ".tmp")
    for suffix in ("", *SQLITE_SIDECARS):  # a copy killed half-way
        tmp.with_name(tmp.name + suffix).unlink(missing_ok=True)
    dst = sqlite3.connect(tmp)
    try:
        source = None
        if located.legacy:
            source = sqlite3.connect(f"file:{state.index_dir / LEGACY_DB_NAME}?mode=ro", uri=True)
        elif located.db_file is not None and not base.rebuild_all:
            source = Store(state.index_dir / located.db_file, readonly=True).conn
        if source is not None:
            try:
                source.backup(dst)
            finally:
                source.close()
        dst.executescript("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);")
        values = {"base_generation": located.generation}
        for kind in KINDS:  # a shard number is never used twice, even after a fresh start
            row = dst.execute("SELECT value FROM meta WHERE key = ?", (f"next_shard_{kind}",)).fetchone()
            recorded = int(json.loads(row[0])) if row else 0
            values[f"next_shard_{kind}"] = max(recorded, _highest_shard_on_disk(state.emb_dir, kind) + 1)
        dst.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            [(k, json.dumps(v)) for k, v in values.items()],
        )
        dst.commit()
    finally:
        dst.close()
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, state.work_path)
    fsync_dir(state.index_dir)


def _highest_shard_on_disk(emb_dir: Path, kind: str) -> int:
    highest = -1
    if emb_dir.is_dir():
        for path in emb_dir.glob(f"{kind}-*.npy"):
            head = path.name[len(kind) + 1 :].split(".")[0]
            if head.isdigit():
                highest = max(highest, int(head))
    return highest


def _remove_work_debris(state: BuildState, store: Store) -> None:
    """Delete files no manifest lists and the work generation does not use (interrupted runs' leftovers)."""
    assert state.work_path is not None
    keep = {state.work_path.name}
    for kind in KINDS:
        for number in store.referenced_shards(kind):
            keep.update(shard_names(kind, number))
        previous = store.get_meta(f"faiss_{kind}") or {}
        if previous.get("file"):
            keep.add(previous["file"])
            keep.update(previous.get("extra_files") or {})
    remove_debris(state.index_dir, keep)


def apply_repairs(state: BuildState, store: Store, damage: dict[str, str]) -> None:
    """Make the next steps rebuild what is damaged: rows of damaged shards are embedded again,
    damaged FAISS files are rebuilt (manifests are written anew anyway)."""
    with store.transaction() as conn:
        for name in damage:
            for kind in KINDS:
                faiss_meta = store.get_meta(f"faiss_{kind}") or {}
                if faiss_meta.get("file") == name or name in (faiss_meta.get("extra_files") or {}):
                    conn.execute("DELETE FROM meta WHERE key = ?", (f"faiss_{kind}",))
                prefix = f"{EMBEDDINGS_DIR}/{kind}-"
                if name.startswith(prefix):
                    number = int(name[len(prefix) :].split(".")[0])
                    conn.execute(
                        f"UPDATE {kind} SET status = 'pending', shard = NULL, row = NULL "
                        "WHERE status = 'indexed' AND shard = ?",
                        (number,),
                    )
                    store.drop_file_checksums(shard_names(kind, number))
    for name, reason in sorted(damage.items()):
        LOG.warning("%s: repairing %s (%s)", state.index_dir, name, reason)


def retire_old(state: BuildState, base: Base) -> None:
    """After the switch: a format-1 index's files go, old generations no reader holds are collected."""
    if base.located.legacy:
        for name in LEGACY_FILES:
            for suffix in ("", *SQLITE_SIDECARS):
                (state.index_dir / (name + suffix)).unlink(missing_ok=True)
        fsync_dir(state.index_dir)
    try:
        collect_garbage(state.index_dir)
        remove_debris(state.index_dir, keep=())  # files only an unreadable old manifest listed
    except OSError as exc:
        LOG.warning("%s: old generations were not removed (%s)", state.index_dir, exc)
