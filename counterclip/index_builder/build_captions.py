"""Build stage 6, captions: sidecars, the captions file and the vocabulary, linked to the images, each
distinct text embedded once.

The caption references are gathered in a fixed order (sidecars, captions file, vocabulary) and tied to
the indexed images they name; in one transaction the ``captions`` table becomes their distinct texts
(a text no source gives any more is removed, a new one is ``pending``) and ``caption_links`` is
rewritten; then the pending texts are embedded and written to caption shards.
"""

from __future__ import annotations

import os

import numpy as np

from counterclip.index_builder import captions as caption_sources
from counterclip.index_builder.build_plan import BuildPlan
from counterclip.index_builder.build_state import BuildState
from counterclip.index_builder.captions import CaptionRef
from counterclip.index_builder.pipeline import ShardWriter
from counterclip.index_builder.store import Store


def sync_captions(state: BuildState, plan: BuildPlan, store: Store, sidecars: list[tuple[str, str]]) -> int:
    """Bring the captions up to date with their sources; returns the captions embedded by this run."""
    with state.timed("captions"):
        refs, ids = _caption_refs(state, plan, store, sidecars)
        _store_captions(store, refs, ids)
        embedded = _embed_pending_captions(state, plan, store)
    return embedded


def _caption_refs(
    state: BuildState, plan: BuildPlan, store: Store, sidecars: list[tuple[str, str]]
) -> tuple[list[CaptionRef], dict[str, int]]:
    """Every caption reference of the sources, and the ids of the indexed images they name."""
    conn = store.conn
    wanted = {stem for stem, _ in sidecars}
    stems: dict[str, list[str]] = {}
    ids: dict[str, int] = {}
    if wanted:
        for item_id, key in conn.execute("SELECT id, path_key FROM images WHERE status = 'indexed'"):
            rel = os.fsdecode(key)
            stem = os.path.splitext(rel)[0]
            if stem in wanted:
                stems.setdefault(stem, []).append(rel)
                ids[rel] = int(item_id)
    refs = list(caption_sources.sidecar_captions(plan.root, sidecars, stems))
    if plan.captions_file is not None:
        refs += caption_sources.captions_file(plan.captions_file, plan.root)
    if plan.vocab_file is not None:
        refs += caption_sources.vocab_file(plan.vocab_file)
    unknown = 0
    for ref in refs:
        if ref.image_rel is not None and ref.image_rel not in ids:
            row = conn.execute(
                "SELECT id FROM images WHERE path_key = ? AND status = 'indexed'",
                (os.fsencode(ref.image_rel),),
            ).fetchone()
            if row is not None:
                ids[ref.image_rel] = int(row[0])
            elif ref.source == "captions-file":
                unknown += 1
    if unknown:
        state.warnings.append(
            f"{unknown} caption(s) of {plan.captions_file} name images that are not in the index; "
            "kept as free captions"
        )
    return refs, ids


def _store_captions(store: Store, refs: list[CaptionRef], ids: dict[str, int]) -> None:
    """The distinct texts as ``captions`` rows (new ones ``pending``), ``caption_links`` rewritten."""
    conn = store.conn
    texts = list(dict.fromkeys(ref.text for ref in refs))
    existing = dict(conn.execute("SELECT text, id FROM captions").fetchall())
    with store.transaction():
        keep = set(texts)
        conn.executemany(
            "DELETE FROM captions WHERE id = ?", [(i,) for t, i in existing.items() if t not in keep]
        )
        conn.executemany(
            "INSERT INTO captions (text, status) VALUES (?, 'pending')",
            [(t,) for t in texts if t not in existing],
        )
        caption_ids = dict(conn.execute("SELECT text, id FROM captions").fetchall())
        conn.execute("DELETE FROM caption_links")
        conn.executemany(
            "INSERT INTO caption_links (caption_id, position, source, image_id) VALUES (?, ?, ?, ?)",
            [
                (
                    caption_ids[ref.text],
                    position,
                    ref.source,
                    ids.get(ref.image_rel) if ref.image_rel else None,
                )
                for position, ref in enumerate(refs)
            ],
        )


def _embed_pending_captions(state: BuildState, plan: BuildPlan, store: Store) -> int:
    """Embed the ``pending`` captions in batches into caption shards; returns how many."""
    pending = store.conn.execute(
        "SELECT id, text FROM captions WHERE status = 'pending' ORDER BY id"
    ).fetchall()
    if pending:
        writer = ShardWriter(store, state.emb_dir, "captions", plan.cfg.shard_size, plan.model.dim)
        task = state.progress.task("embedding captions", len(pending), "txt")
        step = plan.cfg.caption_batch_size
        for start in range(0, len(pending), step):
            chunk = pending[start : start + step]
            vectors = np.asarray(plan.encoder.encode_texts([t for _, t in chunk], batch_size=step))
            writer.add(vectors, [int(i) for i, _ in chunk], [{} for _ in chunk])
            state.progress.advance(task, len(chunk))
        writer.close()
    return len(pending)
