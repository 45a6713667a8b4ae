"""Finding the current generation despite damage, verifying its files, and the full check (fsck).

Three levels of checking, from cheap to complete:

- `Index.open`: every listed file exists with its recorded size; the SQLite and FAISS files match their
  checksums (they are read whole anyway); shard rows are checked as they are read (header, unit norm).
- `update_index`: every file of the generation it starts from matches its checksum (`verify_files`),
  before anything is written; a damaged file stops the update (``--repair`` rebuilds it instead).
- `check_index` (``counterclip check``): all of that, plus SQLite's ``integrity_check`` and the cross
  checks no checksum can make (FAISS ids and counts against the rows, shard ids against the rows, every
  vector unit length), and it names every damaged file instead of stopping at the first.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from counterclip.errors import IndexDamagedError, IndexFormatError
from counterclip.index_builder.checksums import Checksum, mismatch
from counterclip.index_builder.manifest import (
    EMBEDDINGS_DIR,
    KINDS,
    LEGACY_DB_NAME,
    MANIFEST_NAME,
    Manifest,
    db_name,
    manifest_generations,
    manifest_name,
    parse_generation_file,
    read_generation,
)
from counterclip.index_builder.store import connect


@dataclass
class Located:
    """Where an index stands: its current generation and the best manifest found for it."""

    generation: int  # 0 when there is none yet (a first build that has not finished)
    manifest: Manifest | None  # a manifest of that generation that parses, or None
    problems: dict[str, str] = field(default_factory=dict)  # damaged manifest files: name -> reason
    legacy: bool = False  # a format-1 index (``items.sqlite``, before generations)

    @property
    def db_file(self) -> str | None:
        """The SQLite file of the generation (None for none or a legacy index)."""
        if self.legacy or self.generation == 0:
            return None
        return db_name(self.generation)


def _reason(exc: Exception) -> str:
    return getattr(exc, "reason", None) or str(exc)


def locate(index_dir: Path) -> Located:
    """The current generation of ``index_dir``, tolerating damaged manifests.

    ``manifest.json`` when it parses; else the newest generation manifest that parses; else the newest
    finished ``items-G.sqlite`` (G > 1: a first build's file is its work in progress); else a format-1
    index; else generation 0 (nothing published yet). Damaged manifest files are listed in ``problems``.

    Raises:
        IndexFormatError: a manifest of another format or version (not damage: another program's files).
    """
    gens = manifest_generations(index_dir)
    problems: dict[str, str] = {}
    if not gens and (index_dir / LEGACY_DB_NAME).exists():
        return Located(_db_generation(index_dir / LEGACY_DB_NAME) or 0, None, problems, legacy=True)
    if (index_dir / MANIFEST_NAME).exists() or gens:
        try:
            pointer = Manifest.read(index_dir)
        except IndexDamagedError as exc:
            problems[MANIFEST_NAME] = _reason(exc)
        else:
            name = manifest_name(pointer.generation)
            try:
                copy = read_generation(index_dir, pointer.generation)
                if copy.to_dict() != pointer.to_dict():
                    problems[name] = "it disagrees with manifest.json"
            except FileNotFoundError:
                problems[name] = "missing"
            except IndexDamagedError as exc:
                problems[name] = _reason(exc)
            return Located(pointer.generation, pointer, problems)
    for generation in reversed(gens):
        try:
            return Located(generation, read_generation(index_dir, generation), problems)
        except FileNotFoundError:
            continue
        except IndexDamagedError as exc:
            problems[manifest_name(generation)] = _reason(exc)
    finished = []
    for path in index_dir.glob("items-*.sqlite"):
        parsed = parse_generation_file(path.name)
        if parsed and _db_generation(path) == parsed[1]:
            finished.append(parsed[1])
    if finished and (max(finished) > 1 or problems):
        problems.setdefault(MANIFEST_NAME, "missing")
        return Located(max(finished), None, problems)
    return Located(0, None, problems)


def _db_generation(path: Path) -> int | None:
    """The generation an items file says it holds (None when unreadable)."""
    try:
        conn = connect(path, readonly=True)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        finally:
            conn.close()
        return int(row[0]) if row else None
    except (sqlite3.Error, ValueError, TypeError):
        return None


def expected_files(index_dir: Path, located: Located) -> dict[str, Checksum | None]:
    """Every data file of the located generation with its recorded checksum (None: not recorded, as for
    the SQLite file when no manifest survives: its ``integrity_check`` stands in)."""
    if located.manifest is not None:
        return {name: located.manifest.checksum(name) for name in located.manifest.files}
    if located.db_file is None:
        return {}
    out: dict[str, Checksum | None] = {located.db_file: None}
    conn = connect(index_dir / located.db_file, readonly=True)
    try:
        for name, size, xxh3 in conn.execute("SELECT name, size, xxh3 FROM files"):
            out[str(name)] = Checksum(int(size), str(xxh3))
        for kind in KINDS:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (f"faiss_{kind}",)).fetchone()
            faiss_meta = json.loads(row[0]) if row else {}
            if faiss_meta.get("file") and faiss_meta.get("checksum"):
                out[faiss_meta["file"]] = Checksum.from_dict(faiss_meta["checksum"])
                for extra, checksum in (faiss_meta.get("extra_files") or {}).items():
                    out[extra] = Checksum.from_dict(checksum)
    finally:
        conn.close()
    return out


def verify_files(index_dir: Path, expected: dict[str, Checksum | None]) -> dict[str, str]:
    """Full check of each file against its checksum: ``{name: reason}`` for the damaged ones."""
    damaged: dict[str, str] = {}
    for name in sorted(expected):
        recorded = expected[name]
        path = index_dir / name
        if recorded is None:
            reason = "missing" if not path.is_file() else sqlite_integrity(path)
        else:
            reason = mismatch(path, recorded)
        if reason is not None:
            damaged[name] = reason
    return damaged


def sqlite_integrity(path: Path) -> str | None:
    """SQLite's ``integrity_check`` of an items file: None when it is sound, else the first problem."""
    try:
        conn = connect(path, readonly=True)
        try:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return f"SQLite: {exc}"
    if [r[0] for r in rows] != ["ok"]:
        return f"SQLite integrity_check: {rows[0][0]}"[:200]
    return None


@dataclass
class CheckReport:
    """What `check_index` found. ``ok`` when nothing is damaged."""

    index_dir: str
    generation: int
    files: int  # data files of the generation
    bytes: int  # their total size
    damaged: dict[str, str] = field(default_factory=dict)  # name -> reason
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.damaged

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index_dir,
            "generation": self.generation,
            "ok": self.ok,
            "files": self.files,
            "bytes": self.bytes,
            "damaged": [{"file": name, "reason": reason} for name, reason in sorted(self.damaged.items())],
            "seconds": round(self.seconds, 3),
        }


def check_index(index_dir: str | Path) -> CheckReport:
    """Verify every file of the current generation completely and name each damaged one.

    Raises:
        IndexFormatError: not an index, or an index of another format (damage is reported, not raised).
    """
    started = time.perf_counter()
    index_dir = Path(index_dir).expanduser().absolute()
    if not index_dir.is_dir():
        raise IndexFormatError(
            f"no index at {index_dir} (run `counterclip build FOLDER --index {index_dir}`)"
        )
    located = locate(index_dir)
    if located.legacy:
        raise IndexFormatError(
            f"index {index_dir} was written by an older counterclip (format 1, before generations); "
            f"run `counterclip update {index_dir}` to convert it"
        )
    if located.generation == 0:
        if located.problems:
            return CheckReport(str(index_dir), 0, 0, 0, dict(located.problems), time.perf_counter() - started)
        raise IndexFormatError(
            f"index {index_dir} has no complete generation (a first build was interrupted or is running); "
            f"run `counterclip update {index_dir}` to finish it"
        )
    damaged = dict(located.problems)
    expected = expected_files(index_dir, located)
    damaged.update(verify_files(index_dir, expected))
    total = sum(c.size for c in expected.values() if c is not None)
    db = located.db_file
    if db is not None and db not in damaged:
        problem = sqlite_integrity(index_dir / db)
        if problem:
            damaged[db] = problem
    if located.manifest is not None and db is not None and db not in damaged:
        damaged.update(_cross_check(index_dir, located.manifest, damaged))
    return CheckReport(
        str(index_dir), located.generation, len(expected), total, damaged, time.perf_counter() - started
    )


def _cross_check(index_dir: Path, manifest: Manifest, damaged: dict[str, str]) -> dict[str, str]:
    """What checksums cannot see: the files agree with the rows (FAISS ids, shard ids, unit norms)."""
    from counterclip.index_builder.faiss_index import read_index, stored_ids
    from counterclip.index_builder.shards import load_shard

    found: dict[str, str] = {}
    conn = connect(index_dir / manifest.db_file, readonly=True)
    try:
        for kind in KINDS:
            rows = np.asarray(
                conn.execute(
                    f"SELECT id, shard, row FROM {kind} WHERE status = 'indexed' ORDER BY id"
                ).fetchall(),
                dtype=np.int64,
            ).reshape(-1, 3)
            name = manifest.faiss_file(kind)
            if name not in damaged:
                try:
                    io = str(manifest.faiss[kind].get("io", "ram"))  # on-disk lists are opened in place
                    index = read_index(index_dir / name, io=io)
                    ids = np.sort(stored_ids(index))
                    if index.d != manifest.model.embed_dim or not np.array_equal(ids, rows[:, 0]):
                        found[name] = (
                            f"it holds {index.ntotal} vectors of width {index.d}; {manifest.db_file} lists "
                            f"{len(rows)} {kind} of width {manifest.model.embed_dim}"
                        )
                except IndexDamagedError as exc:
                    found[name] = _reason(exc)
            for number in np.unique(rows[:, 1]).tolist():
                names = (
                    f"{EMBEDDINGS_DIR}/{kind}-{number:05d}.npy",
                    f"{EMBEDDINGS_DIR}/{kind}-{number:05d}.ids.npy",
                )
                if any(n in damaged for n in names):
                    continue
                try:
                    vectors, ids = load_shard(index_dir / EMBEDDINGS_DIR, kind, number)
                except IndexDamagedError as exc:
                    found[exc.file or names[0]] = _reason(exc)
                    continue
                mine = rows[rows[:, 1] == number]
                if mine[:, 2].max(initial=-1) >= len(ids) or not np.array_equal(ids[mine[:, 2]], mine[:, 0]):
                    found[names[1]] = f"its ids disagree with {manifest.db_file}"
                elif vectors.shape[1] != manifest.model.embed_dim:
                    found[names[0]] = f"width {vectors.shape[1]}, the index has {manifest.model.embed_dim}"
    finally:
        conn.close()
    return found
