"""Build stage 5, decode and embed -> write shards: every ``pending`` image row becomes a vector.

The rows are read in id order, in pages; the embedder (`pipeline.embed_images`, or one of
`distributed`'s) decodes and embeds them and hands the vectors to a `pipeline.ShardWriter`, which writes
a shard every ``shard_size`` rows and commits its rows in one transaction: the unit of resume, so a
re-run after a crash starts where the last committed shard ended.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

from counterclip.index_builder.build_plan import BuildPlan
from counterclip.index_builder.build_state import BuildState
from counterclip.index_builder.pipeline import ShardWriter, StageTimes, WorkItem
from counterclip.index_builder.store import Store

Embedder = Callable[..., StageTimes]  # called like `pipeline.embed_images`


def embed_pending(state: BuildState, plan: BuildPlan, store: Store, embedder: Embedder) -> int:
    """Embed every pending image row; returns the images embedded (files that failed are recorded)."""
    total = store.count("images", "pending")
    if total == 0:
        return 0
    cfg = plan.cfg
    writer = ShardWriter(store, state.emb_dir, "images", cfg.shard_size, plan.model.dim)
    task = state.progress.task("embedding images", total, "img")
    times = embedder(
        pending_items(store, plan.root),
        plan.encoder,
        writer,
        plan.decode,
        batch_size=cfg.batch_size,
        workers=cfg.workers,
        prefetch_batches=cfg.prefetch_batches,
        on_progress=lambda n: state.progress.advance(task, n),
    )
    state.stage.update(
        decode_thread_seconds=times.decode,
        preprocess=times.preprocess,
        embed=times.embed,
        write=times.write,
        pipeline=times.wall,
    )
    return times.items - times.failed


def pending_items(store: Store, root: Path) -> Iterator[WorkItem]:
    """Pending rows in id order, fetched in pages (flat memory, no cursor open across commits)."""
    last = -1
    while True:
        page = store.conn.execute(
            "SELECT id, path_key FROM images WHERE status = 'pending' AND id > ? ORDER BY id LIMIT 1024",
            (last,),
        ).fetchall()
        if not page:
            return
        for item_id, key in page:
            yield WorkItem(int(item_id), str(root / os.fsdecode(key)))
        last = page[-1][0]
