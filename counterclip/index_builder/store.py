"""`items.sqlite`: one row per image (id = FAISS id) and per caption, plus build settings.

Rows, not files, are the truth about what is in the index: a shard file is live only while some row
points at it, so every multi-step change (write a shard file, then commit the rows that point at it)
is safe to interrupt at any moment. WAL mode, one writer (the builder, under the lock), any number of
readers (one connection per thread).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from counterclip.errors import IndexFormatError
from counterclip.index_builder.manifest import DB_NAME, KINDS

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
"""


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    """Open ``items.sqlite`` (WAL, foreign-key-free, rows as tuples)."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=30)
    else:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    return conn


class Store:
    """The builder's read-write view of ``items.sqlite`` (single thread, under the writer lock)."""

    def __init__(self, index_dir: Path) -> None:
        self.path = index_dir / DB_NAME
        self.conn = connect(self.path)
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    # --- transactions ---------------------------------------------------------------------------
    def transaction(self) -> _Transaction:
        """``with store.transaction():`` runs the block in BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error)."""
        return _Transaction(self.conn)

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
            raise IndexFormatError(f"{path} is missing")
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, readonly=True)
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
            for row in self.conn().execute(
                f"SELECT {', '.join(select)} FROM {table} WHERE id IN ({marks})", chunk
            ):
                found[int(row[0])] = dict(zip(select, row, strict=True))
        return [found.get(int(i)) for i in ids]

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query on this thread's connection."""
        return self.conn().execute(sql, params).fetchall()
