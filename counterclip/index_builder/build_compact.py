"""Build stage 7, compaction: shards that hold removed rows, and small shards, are rewritten into new ones.

Every shard of the new generation is then fully live. The rows move to new shard numbers; old shards
that a published generation lists stay for it (they leave with it, `generations.collect_garbage`), those
written by this run are deleted now.
"""

from __future__ import annotations

import logging

import numpy as np

from counterclip.index_builder.build_state import BuildState
from counterclip.index_builder.checksums import Checksum
from counterclip.index_builder.manifest import KINDS
from counterclip.index_builder.shards import delete_shards, load_shard, read_ids, shard_names, write_shard
from counterclip.index_builder.store import Store

LOG = logging.getLogger(__name__)


def compact_shards(state: BuildState, store: Store, shard_size: int) -> None:
    """Compact the shards of every collection (stage ``compact``)."""
    with state.timed("compact"):
        for kind in KINDS:
            compact(state, store, kind, shard_size)


def compact(state: BuildState, store: Store, kind: str, shard_size: int) -> None:
    """Rewrite the shards of ``kind`` holding removed rows, and merge small shards, so every shard is
    fully live."""
    live = store.referenced_shards(kind)
    sums = store.file_checksums()
    lengths = {n: len(read_ids(state.emb_dir, kind, n, sums)) for n in live}
    dirty = {n for n in live if live[n] < lengths[n]}
    small = {n for n in live if live[n] < shard_size // 2}
    rewrite = sorted(dirty | (small if len(small | dirty) >= 2 else set()))
    if not rewrite:
        return
    rows = store.live_rows(kind, rewrite)
    first = int(store.get_meta(f"next_shard_{kind}", 0))
    packer = _Packer(state, kind, first, shard_size)
    by_shard: dict[int, list[tuple[int, int]]] = {}
    for item_id, shard, row in rows:
        by_shard.setdefault(shard, []).append((item_id, row))
    for shard in rewrite:
        picked = by_shard.get(shard, [])
        if picked:
            vectors = load_shard(state.emb_dir, kind, shard, sums)[0]
            packer.add(vectors, picked)
    packer.flush()
    with store.transaction():
        store.move_rows(kind, packer.moves)
        store.set_meta(**{f"next_shard_{kind}": packer.number})
        store.set_file_checksums(packer.sums)
        store.drop_file_checksums([name for n in rewrite for name in shard_names(kind, n)])
    unpublished = [n for n in rewrite if shard_names(kind, n)[0] not in state.published]
    delete_shards(state.emb_dir, kind, unpublished)
    LOG.info("compacted %d %s shard(s) into %d", len(rewrite), kind, len(set(m[1] for m in packer.moves)))


class _Packer:
    """Packs live rows into new shards of ``shard_size`` rows, numbered from ``number`` on."""

    def __init__(self, state: BuildState, kind: str, number: int, shard_size: int) -> None:
        self.state, self.kind, self.number, self.shard_size = state, kind, number, shard_size
        self.moves: list[tuple[int, int, int]] = []  # (id, new shard, new row)
        self.sums: dict[str, Checksum] = {}  # the new shard files
        self._vectors: list[np.ndarray] = []
        self._ids: list[int] = []

    def add(self, vectors: np.ndarray, picked: list[tuple[int, int]]) -> None:
        """Take the rows ``[(id, row in vectors)]``, writing a shard each time one is full."""
        pos = 0
        while pos < len(picked):
            take = min(self.shard_size - len(self._ids), len(picked) - pos)
            sub = picked[pos : pos + take]
            self._vectors.append(np.asarray(vectors[[r for _, r in sub]], dtype=np.float32))
            self._ids.extend(i for i, _ in sub)
            pos += take
            if len(self._ids) >= self.shard_size:
                self.flush()

    def flush(self) -> None:
        """Write the rows taken so far as one shard."""
        if not self._ids:
            return
        vectors, ids = np.concatenate(self._vectors), np.asarray(self._ids)
        self.sums.update(write_shard(self.state.emb_dir, self.kind, self.number, vectors, ids))
        self.moves.extend((i, self.number, r) for r, i in enumerate(self._ids))
        self.number += 1
        self._vectors.clear(), self._ids.clear()
