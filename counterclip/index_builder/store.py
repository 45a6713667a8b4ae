"""``items-G.sqlite``: one row per image (id = FAISS id) and per caption, plus build settings.

Rows, not files, are the truth about what is in the index: a shard file is live only while some row
points at it, so every multi-step change (write a shard file, then commit the rows that point at it)
is safe to interrupt at any moment. Each generation has its own file: the builder copies generation
G's file to ``items-(G+1).sqlite`` and works on the copy (WAL mode, one writer under the lock); when the
generation is complete it is checkpointed into one self-contained file (`Store.finalize`) and never
written again, so readers open it with ``immutable=1``: no locks, no WAL, a consistent snapshot for as
long as they hold the generation (one connection per thread).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from counterclip.errors import AccessDeniedError, CounterclipError, DiskFullError
from counterclip.index_builder.checksums import Checksum
from counterclip.index_builder.manifest import KINDS, damaged_error

LOG = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,   -- the FAISS id; AUTOINCREMENT: never reused
    path_key BLOB NOT NULL UNIQUE,          -- raw bytes of the path relative to the root (lossless)
    path TEXT NOT NULL,                     -- the same path for humans (undecodable bytes escaped)
    size INTEGER,                           -- bytes
    mtime_ns INTEGER,                       -- modification time, ns
    sha256 TEXT,                            -- content hash
    width INTEGER,                          -- after EXIF rotation
    height INTEGER,
    status TEXT NOT NULL CHECK (status IN ('pending', 'indexed', 'error')),
    error TEXT,                             -- why it was skipped (status = 'error')
    shard INTEGER,                          -- embeddings/images-SHARD.npy ...
    row INTEGER                             -- ... row
);
CREATE INDEX IF NOT EXISTS images_status ON images(status);
CREATE INDEX IF NOT EXISTS images_shard ON images(shard);
CREATE TABLE IF NOT EXISTS captions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,   -- the FAISS id of the caption index
    text TEXT NOT NULL UNIQUE,              -- whitespace-normalised; duplicates are embedded once
    status TEXT NOT NULL CHECK (status IN ('pending', 'indexed')),
    shard INTEGER,
    row INTEGER
);
CREATE INDEX IF NOT EXISTS captions_shard ON captions(shard);
CREATE TABLE IF NOT EXISTS caption_links (
    caption_id INTEGER NOT NULL,            -- captions.id
    position INTEGER NOT NULL,              -- order of appearance (sidecars, then captions file, then vocab)
    source TEXT NOT NULL CHECK (source IN ('sidecar', 'captions-file', 'vocab')),
    image_id INTEGER,                       -- images.id when the caption describes an indexed image
    PRIMARY KEY (caption_id, position)
);
CREATE INDEX IF NOT EXISTS caption_links_image ON caption_links(image_id);
CREATE TABLE IF NOT EXISTS files (
    name TEXT PRIMARY KEY,                  -- a shard file, relative to the index directory
    size INTEGER NOT NULL,                  -- bytes
    xxh3 TEXT NOT NULL                      -- checksum, recorded when the shard was first published
);
CREATE TABLE IF NOT EXISTS file_blocks (
    name TEXT PRIMARY KEY,                  -- a vector shard file (files.name)
    block_bytes INTEGER NOT NULL,           -- bytes per block
    digests TEXT NOT NULL                   -- xxh3-64 hex of each block, concatenated
);
"""


# indexes of SCHEMA no constraint needs (`Store.bulk_insert` drops them while it fills a new store)
SECONDARY_INDEXES = ("images_status", "images_shard", "captions_shard", "caption_links_image")
WRITER_CACHE_KB = 256 * 1024  # page cache of the builder's connection, KiB


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    """Open an items file: read-write in WAL mode (the builder), or read-only and immutable (a
    published generation: no locks, no WAL)."""
    if readonly:
        uri = f"file:{_quote(path)}?mode=ro&immutable=1"
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=30)
    else:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        # The builder inserts up to millions of rows into tables with unique indexes on keys in no
        # particular order (paths, caption texts); with SQLite's default 2 MB page cache each insert then
        # reads index pages back from the file. A larger cap is only used as the file grows.
        conn.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KB}")
    return conn


def _quote(path: Path) -> str:
    from urllib.parse import quote

    return quote(os.fsdecode(Path(path).absolute()))


def sqlite_error(exc: sqlite3.Error, path: Path) -> CounterclipError:
    """The user-facing error for a SQLite failure on ``path`` (damage, full disk, permissions)."""
    text = str(exc)
    index_dir = path.parent
    code = getattr(exc, "sqlite_errorname", "")
    if code == "SQLITE_FULL" or "disk is full" in text:
        return DiskFullError(f"index {index_dir}: disk full while writing {path.name} ({text})")
    if code in ("SQLITE_READONLY", "SQLITE_PERM") or "readonly" in text:
        return AccessDeniedError(f"index {index_dir}: cannot write {path.name} ({text})")
    if code == "SQLITE_CANTOPEN":
        return AccessDeniedError(f"index {index_dir}: cannot open {path.name} ({text})")
    return damaged_error(index_dir, path.name, text)


class Store:
    """The builder's view of one items file: read-write (single thread, under the writer lock), or
    read-only for looking at a published generation's settings."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.conn = connect(self.path, readonly=readonly)
        if not readonly:
            self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def finalize(self) -> None:
        """Make the file self-contained and close it: checkpoint the WAL into it, leave WAL mode (so
        readers can open it immutable), fsync."""
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        mode = self.conn.execute("PRAGMA journal_mode=DELETE").fetchone()[0]
        if str(mode).lower() != "delete":
            raise sqlite3.OperationalError(f"cannot leave WAL mode (journal_mode {mode})")
        self.conn.close()
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # --- file checksums -------------------------------------------------------------------------
    def file_checksums(self) -> dict[str, Checksum]:
        """Shard file name -> its checksum (with its block checksums where recorded), as recorded when it
        was published."""
        blocks = {}
        if self._has_table("file_blocks"):  # an items file written before block checksums has none
            blocks = {
                n: (b, d)
                for n, b, d in self.conn.execute("SELECT name, block_bytes, digests FROM file_blocks")
            }
        out = {}
        for name, size, xxh3 in self.conn.execute("SELECT name, size, xxh3 FROM files"):
            block_bytes, digests = blocks.get(name, (None, None))
            out[name] = Checksum(int(size), xxh3, digests, None if block_bytes is None else int(block_bytes))
        return out

    def set_file_checksums(self, sums: dict[str, Checksum]) -> None:
        self.conn.executemany(
            "INSERT OR REPLACE INTO files (name, size, xxh3) VALUES (?, ?, ?)",
            [(n, c.size, c.xxh3) for n, c in sums.items()],
        )
        self.conn.executemany(
            "INSERT OR REPLACE INTO file_blocks (name, block_bytes, digests) VALUES (?, ?, ?)",
            [(n, c.block_bytes, c.blocks) for n, c in sums.items() if c.blocks is not None],
        )

    def drop_file_checksums(self, names: Iterable[str]) -> None:
        dropped = [(n,) for n in names]
        self.conn.executemany("DELETE FROM files WHERE name = ?", dropped)
        self.conn.executemany("DELETE FROM file_blocks WHERE name = ?", dropped)

    def _has_table(self, name: str) -> bool:
        query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
        return self.conn.execute(query, (name,)).fetchone() is not None

    # --- transactions ---------------------------------------------------------------------------
    def transaction(self) -> _Transaction:
        """``with store.transaction():`` runs the block in BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error)."""
        return _Transaction(self.conn)

    @contextmanager
    def bulk_insert(self) -> Iterator[None]:
        """``with store.bulk_insert():`` fills a new store without its secondary indexes, rebuilt at the
        end: one sort each instead of a B-tree insert per row (an import of 1M rows). Unique keys stay
        checked. Not for a store readers see: an error leaves the indexes dropped."""
        for name in SECONDARY_INDEXES:
            self.conn.execute(f"DROP INDEX IF EXISTS {name}")
        yield
        self.conn.executescript(SCHEMA)  # CREATE INDEX IF NOT EXISTS: only the dropped ones

    # --- meta -----------------------------------------------------------------------------------
    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_meta(self, **values: Any) -> None:
        self.conn.executemany(
            "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [(k, json.dumps(v, sort_keys=True)) for k, v in values.items()],
        )

    # --- counts ---------------------------------------------------------------------------------
    def count(self, kind: str, status: str) -> int:
        assert kind in KINDS
        return int(
            self.conn.execute(f"SELECT COUNT(*) FROM {kind} WHERE status = ?", (status,)).fetchone()[0]
        )

    def referenced_shards(self, kind: str) -> dict[int, int]:
        """shard number -> live rows pointing at it."""
        assert kind in KINDS
        rows = self.conn.execute(
            f"SELECT shard, COUNT(*) FROM {kind} WHERE status = 'indexed' GROUP BY shard"
        ).fetchall()
        return {int(s): int(n) for s, n in rows}

    def live_rows(self, kind: str, shards: Sequence[int]) -> list[tuple[int, int, int]]:
        """(id, shard, row) of live rows in ``shards``, ordered by shard then row."""
        assert kind in KINDS
        out: list[tuple[int, int, int]] = []
        for chunk in _chunks(list(shards), 500):
            marks = ",".join("?" * len(chunk))
            out += self.conn.execute(
                f"SELECT id, shard, row FROM {kind} WHERE status = 'indexed' AND shard IN ({marks})", chunk
            ).fetchall()
        out.sort(key=lambda r: (r[1], r[2]))
        return out

    def move_rows(self, kind: str, moves: Iterable[tuple[int, int, int]]) -> None:
        """Point rows at new (shard, row): ``moves`` holds (id, shard, row). Call inside a transaction."""
        assert kind in KINDS
        self.conn.executemany(
            f"UPDATE {kind} SET shard = ?, row = ? WHERE id = ?", [(s, r, i) for i, s, r in moves]
        )

    def errors(self) -> list[dict[str, Any]]:
        """Skipped files: [{id, path, reason}] ordered by path."""
        rows = self.conn.execute(
            "SELECT id, path, error FROM images WHERE status = 'error' ORDER BY path_key"
        ).fetchall()
        return [{"id": int(i), "path": p, "reason": e} for i, p, e in rows]

    def max_id(self, kind: str) -> int:
        """The largest id ever handed out for ``kind`` (AUTOINCREMENT's sequence), 0 if none."""
        row = self.conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (kind,)).fetchone()
        return int(row[0]) if row else 0


class _Transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class SqliteMetadataProvider:
    """Read-only metadata by id, safe across threads (one connection per thread).

    ``get(ids, cols)`` returns one dict per id, in the order given (the clip-retrieval metadata-provider
    protocol, with ids equal to FAISS ids).
    """

    IMAGE_COLS = (
        "id",
        "path_key",
        "path",
        "size",
        "mtime_ns",
        "sha256",
        "width",
        "height",
        "status",
        "error",
    )
    CAPTION_COLS = ("id", "text")

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise damaged_error(path.parent, path.name, "missing")
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = connect(self.path, readonly=True)
            except sqlite3.Error as exc:
                raise sqlite_error(exc, self.path) from None
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()

    def get(self, table: str, ids: Sequence[int], cols: Sequence[str]) -> list[dict[str, Any] | None]:
        """Rows of ``table`` for ``ids`` (None for unknown ids), columns ``cols``, in the order of ``ids``."""
        assert table in KINDS
        allowed = self.IMAGE_COLS if table == "images" else self.CAPTION_COLS
        bad = [c for c in cols if c not in allowed]
        if bad:
            raise KeyError(f"unknown {table} column(s) {bad}")
        select = ["id", *[c for c in cols if c != "id"]]
        found: dict[int, dict[str, Any]] = {}
        unique = sorted({int(i) for i in ids})
        for chunk in _chunks(unique, 500):
            marks = ",".join("?" * len(chunk))
            for row in self.query(f"SELECT {', '.join(select)} FROM {table} WHERE id IN ({marks})", chunk):
                found[int(row[0])] = dict(zip(select, row, strict=True))
        return [found.get(int(i)) for i in ids]

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query on this thread's connection (SQLite failures become one-line errors)."""
        try:
            return self.conn().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise sqlite_error(exc, self.path) from None
