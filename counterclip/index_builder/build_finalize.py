"""Build stage 9, finalize and publish: the calibration, the checksums, the manifest (the switch).

The calibration recorded with the generation is the one the user fitted (``counterclip calibrate``),
else one fitted on the images' own captions when there are enough. Shards new in this generation are
checked against their rows and checksummed, the items file is closed for good (self-contained, out of
WAL mode), then ``manifest-(G+1).json`` is written and ``manifest.json`` switched to it: readers opening
from then on see the new generation. An import publishes its first generation the same way.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from counterclip.calibration import Calibration
from counterclip.index_builder.build_plan import BuildPlan
from counterclip.index_builder.build_state import BuildState
from counterclip.index_builder.calibrate import calibration_from_pairs
from counterclip.index_builder.checksums import Checksum, checksum_file
from counterclip.index_builder.faiss_index import FaissInfo
from counterclip.index_builder.manifest import KINDS, Manifest, ModelRecord, Settings, damaged_error
from counterclip.index_builder.shards import load_shard, shard_names
from counterclip.index_builder.store import Store


def index_calibration(state: BuildState, plan: BuildPlan, store: Store, origin: str) -> Calibration | None:
    """The calibration recorded with the index: one the user fitted (``counterclip calibrate``), else
    one fitted here on the images' own captions (sidecars, captions file) when there are enough.

    ``origin``: what fitted it (``build``, ``import``), recorded in the calibration.
    """
    model = plan.model
    user = store.get_meta("user_calibration")
    if user is not None:
        calibration = Calibration.from_dict(user, f"index {state.index_dir}: the recorded calibration")
        if calibration.fingerprint == model.fingerprint:
            return calibration
    with state.timed("calibration"):
        pairs = store.conn.execute(
            "SELECT l.image_id, l.caption_id FROM caption_links l JOIN images i ON i.id = l.image_id "
            "JOIN captions c ON c.id = l.caption_id WHERE l.image_id IS NOT NULL "
            "AND i.status = 'indexed' AND c.status = 'indexed' ORDER BY l.image_id, l.position"
        ).fetchall()
        calibration = calibration_from_pairs(
            state.index_dir, pairs, model.pair_score, model.fingerprint, origin, store=store, dim=model.dim
        )
    return calibration


def generation_counts(store: Store) -> dict[str, int]:
    """The manifest's ``counts``: items, skipped files, shards, highest ids."""
    return {
        "images": store.count("images", "indexed"),
        "captions": store.count("captions", "indexed"),
        "skipped": store.count("images", "error"),
        "image_shards": len(store.referenced_shards("images")),
        "caption_shards": len(store.referenced_shards("captions")),
        "max_image_id": store.max_id("images"),
        "max_caption_id": store.max_id("captions"),
    }


def publish(
    state: BuildState,
    plan: BuildPlan,
    store: Store,
    faiss: dict[str, FaissInfo],
    calibration: Calibration | None,
    counts: dict[str, int],
    last_run: dict[str, Any],
) -> Manifest:
    """Finalize the items file and write the generation's manifest (the switch); returns it."""
    files, faiss_files = finalize(state, store, last_run)
    model = plan.model
    manifest = Manifest(
        generation=state.work_gen,
        created=plan.created,
        updated=last_run["finished"],
        root=str(plan.root),
        model=ModelRecord(model.spec, model.fingerprint, model.dim, model.pair_score.to_dict(), plan.runtime),
        counts=counts,
        faiss={kind: {**info.to_dict(), "file": faiss_files[kind]} for kind, info in faiss.items()},
        settings=Settings(
            captions_file=str(plan.captions_file) if plan.captions_file else None,
            vocab_file=str(plan.vocab_file) if plan.vocab_file else None,
            index_kind=plan.index_kind,
            config=plan.cfg.to_dict(),
            decode=dataclasses.asdict(plan.decode),
            decode_check=plan.decode_check,
        ),
        last_run=last_run,
        calibration=calibration.to_dict() if calibration is not None else None,
        files={name: checksum.to_dict() for name, checksum in sorted(files.items())},
    )
    manifest.write(state.index_dir)  # the switch: readers opening from now on see this generation
    return manifest


def with_blocks(index_dir: Path, name: str, recorded: Checksum) -> Checksum:
    """``recorded`` with the block checksums of the file ``name`` added (an index written before they were
    recorded), read once and checked against the whole-file checksum first."""
    got = checksum_file(index_dir / name, blocks=True)
    if (got.size, got.xxh3) != (recorded.size, recorded.xxh3):
        raise damaged_error(index_dir, name, "its bytes do not match its recorded checksum")
    return got


def finalize(
    state: BuildState, store: Store, last_run: dict[str, Any]
) -> tuple[dict[str, Checksum], dict[str, str]]:
    """Checksum the shards new in this generation (after checking them against their rows), record
    the generation, close the items file for good; returns every file of the generation with its
    checksum, and the FAISS file of each collection."""
    assert state.work_path is not None
    recorded = store.file_checksums()
    files: dict[str, Checksum] = {}
    new: dict[str, Checksum] = {}
    for kind in KINDS:
        for number in sorted(store.referenced_shards(kind)):
            names = shard_names(kind, number)
            if all(name in recorded for name in names):
                files.update({name: recorded[name] for name in names})
                if recorded[names[0]].blocks is None:  # recorded before block checksums: add them now
                    new[names[0]] = files[names[0]] = with_blocks(
                        state.index_dir, names[0], recorded[names[0]]
                    )
                continue
            _, ids = load_shard(state.emb_dir, kind, number)  # shape and unit norms
            rows = store.conn.execute(
                f"SELECT id, row FROM {kind} WHERE status = 'indexed' AND shard = ?", (number,)
            ).fetchall()
            if any(row >= len(ids) or ids[row] != item_id for item_id, row in rows):
                raise damaged_error(
                    state.index_dir, names[1], f"its ids disagree with {state.work_path.name}"
                )
            for name in names:
                new[name] = files[name] = checksum_file(state.index_dir / name, blocks=name == names[0])
    faiss_files = {}
    for kind in KINDS:
        faiss_meta = store.get_meta(f"faiss_{kind}")
        faiss_files[kind] = faiss_meta["file"]
        files[faiss_meta["file"]] = Checksum.from_dict(faiss_meta["checksum"])
        for extra, checksum in (faiss_meta.get("extra_files") or {}).items():
            files[extra] = Checksum.from_dict(checksum)
    with store.transaction():
        store.set_file_checksums(new)
        store.drop_file_checksums(set(recorded) - set(files))
        store.set_meta(generation=state.work_gen, last_run=last_run)
    store.finalize()
    files[state.work_path.name] = checksum_file(state.work_path)
    return files, faiss_files
