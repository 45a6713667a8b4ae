"""Build stage 1, where the index stands: the generation G a run starts from, verified, and the one it makes.

Before anything is written: the index directory is one the builder may write (`check_directory`), G is
found (`integrity.locate`) and its files are checked against their checksums (with ``repair`` the damaged
ones are listed instead of stopping the run), and the recorded settings the run is checked against are
read (`meta_view`: from an interrupted run's items file, G's items file or, when that is damaged, its
manifest).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from counterclip._fileio import atomic_write
from counterclip.errors import IndexDamagedError, InputError
from counterclip.index_builder.build_state import BuildState
from counterclip.index_builder.integrity import Located, expected_files, locate, verify_files
from counterclip.index_builder.manifest import (
    EMBEDDINGS_DIR,
    GC_LOCK_NAME,
    LEGACY_DB_NAME,
    LOCK_NAME,
    MANIFEST_NAME,
    Manifest,
    damaged_error,
    db_name,
    manifest_generations,
    manifest_name,
    repair_hint,
)
from counterclip.index_builder.store import Store


def looks_like_index(index_dir: Path) -> bool:
    """A manifest, a generation or an items file (of this format or the first) is there."""
    if not index_dir.is_dir():
        return False
    return (
        (index_dir / MANIFEST_NAME).exists()
        or bool(manifest_generations(index_dir))
        or any(index_dir.glob("items-*.sqlite"))
        or (index_dir / LEGACY_DB_NAME).exists()
    )


def check_directory(index_dir: Path) -> bool:
    """Refuse to build into a non-empty directory that is not an index (never clobber user files);
    True when the directory does not exist yet (a new index)."""
    if not index_dir.exists():
        return True
    if not index_dir.is_dir():
        raise InputError(f"index path {index_dir} exists and is not a directory")
    if looks_like_index(index_dir):
        return False
    ours = (LOCK_NAME, GC_LOCK_NAME, EMBEDDINGS_DIR)
    foreign = [
        p.name
        for p in index_dir.iterdir()
        if p.name not in ours and ".tmp" not in p.name  # debris
    ]
    if foreign:
        raise InputError(
            f"{index_dir} is not empty and is not a counterclip index (found {sorted(foreign)[:3]}); "
            "choose a new or empty --index directory"
        )
    return False


@dataclass(frozen=True)
class Base:
    """The generation a run starts from, and how it goes on from there."""

    located: Located  # G, its manifest, damaged manifest files
    damage: dict[str, str]  # {file: reason} of G's damaged files (only with repair)
    rebuild_all: bool  # G's items file is damaged (repair): start again from the images
    resume: bool  # an interrupted run's items file, copied from G, is there: finish it


def find_base(state: BuildState) -> Base:
    """Locate and verify G; set the run's generations (``state.base_gen``, ``work_gen``, ``work_path``)."""
    located = locate(state.index_dir)
    damage = verify_base(state, located)
    state.base_gen = located.generation
    state.work_gen = located.generation + 1
    if state.repair:  # never reuse the number of a generation whose manifest is damaged
        state.work_gen = max([state.work_gen - 1, *manifest_generations(state.index_dir)]) + 1
    state.work_path = state.index_dir / db_name(state.work_gen)
    base_db = located.db_file
    rebuild_all = state.repair and located.generation > 0 and (base_db is None or base_db in damage)
    resume = (
        not state.repair and state.work_path.exists() and _work_base(state.work_path) == located.generation
    )
    return Base(located, damage, rebuild_all, resume)


def verify_base(state: BuildState, located: Located) -> dict[str, str]:
    """Verify every file of the generation the run starts from: ``{name: reason}`` of the damaged
    ones (with ``repair``); without it, the first damaged file stops the run."""
    if located.legacy:
        return {}
    index_dir = state.index_dir
    expected = expected_files(index_dir, located) if located.generation else {}
    damage = dict(located.problems)
    damage.update(verify_files(index_dir, expected))
    if damage == {MANIFEST_NAME: "missing"} and located.manifest is not None:
        # A newest generation complete in every file, only the switch missing (a run killed between
        # its two manifest writes, or the file deleted): publishing it again is all there is to do.
        atomic_write(index_dir / MANIFEST_NAME, located.manifest.text())
        state.warnings.append(f"manifest.json was missing; restored from {manifest_name(located.generation)}")
        damage = {}
    state.verified = {name for name in expected if name not in damage}
    state.base_bytes = sum(c.size for c in expected.values() if c is not None)
    if located.manifest is not None:
        state.items_estimate = sum(int(i.get("ntotal", 0)) for i in located.manifest.faiss.values())
    if damage and not state.repair:
        name, reason = sorted(damage.items())[0]
        error = damaged_error(index_dir, name, reason)
        if len(damage) > 1:
            error = IndexDamagedError(
                f"{str(error).split('; run ')[0]} (and {len(damage) - 1} more damaged file(s)); "
                f"{repair_hint(index_dir)}",
                file=name,
                reason=reason,
            )
        raise error
    return damage


def _work_base(path: Path) -> int | None:
    """The generation an items file in progress was copied from (None if it cannot say)."""
    try:
        conn = sqlite3.connect(path)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'base_generation'").fetchone()
        finally:
            conn.close()
        return int(json.loads(row[0])) if row else None
    except (sqlite3.Error, ValueError, TypeError):
        return None


class MetaView:
    """The recorded settings a run is checked against before anything is written: read from the work
    in progress, the current generation's items file, or (when that is damaged) its manifest."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def get_meta(self, key: str, default: Any = None) -> Any:
        """The recorded value of ``key`` (``default`` when none)."""
        return self.values.get(key, default)

    @classmethod
    def from_db(cls, path: Path, published: bool) -> MetaView:
        """All meta values of an items file (``published``: immutable, opened without locks)."""
        if published:
            conn = Store(path, readonly=True).conn
        else:
            conn = sqlite3.connect(path)
        try:
            return cls({k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")})
        finally:
            conn.close()

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> MetaView:
        """The settings a manifest records (to rebuild an index whose items file is damaged)."""
        settings = manifest.settings
        return cls(
            {
                "root": manifest.root,
                "model_spec": manifest.model.spec.to_dict(),
                "fingerprint": manifest.model.fingerprint,
                "embed_dim": manifest.model.embed_dim,
                "config": settings.config or None,
                "captions_file": settings.captions_file,
                "vocab_file": settings.vocab_file,
                "index_kind": settings.index_kind,
                "decode": settings.decode or None,
                "created": manifest.created,
                "runtime": manifest.model.runtime,
            }
        )


def meta_view(state: BuildState, base: Base) -> MetaView:
    """The recorded settings of the run's starting point (see `MetaView`)."""
    assert state.work_path is not None
    located = base.located
    if base.resume:
        return MetaView.from_db(state.work_path, published=False)
    if located.legacy:
        return MetaView.from_db(state.index_dir / LEGACY_DB_NAME, published=False)
    if located.db_file is not None and not base.rebuild_all:
        return MetaView.from_db(state.index_dir / located.db_file, published=True)
    if located.manifest is not None:
        return MetaView.from_manifest(located.manifest)
    if located.generation:
        raise IndexDamagedError(
            f"index {state.index_dir} cannot be repaired: its items file and every manifest are damaged; "
            f"remove it and build again (`counterclip build FOLDER --index {state.index_dir}`)"
        )
    return MetaView({})
