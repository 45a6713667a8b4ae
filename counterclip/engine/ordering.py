"""Stage 5, order: the valid candidates (by their stored vectors) closest to the original first, with
distinct changes among the head. Ordering comes before re-scoring because re-scoring is the cost: only
as many files (or texts) are re-encoded as it takes to fill the k answers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from counterclip.engine.candidates import Candidates
from counterclip.engine.options import EngineOptions
from counterclip.engine.posing import Posed
from counterclip.engine.ranking import mmr_order


@dataclass(frozen=True)
class Ordered:
    """Rows of `Candidates` in the order answers are taken, and the words each row changes (captions)."""

    rows: list[int]
    word_edits: dict[int, int]  # row -> words changed from the original caption (caption side by words)


def order(posed: Posed, found: Candidates, opts: EngineOptions) -> Ordered:
    """Rows of ``found`` that pass the criterion on their stored vectors, closest to the original first,
    with distinct changes among the head (MMR over the ``4 k`` closest, room for items that fail
    verification)."""
    if not len(found.ids):
        return Ordered([], {})
    side = posed.side
    valid = np.flatnonzero(posed.criterion.valid(found.vectors))
    relevance, edits = side.proximity(found.ids[valid], found.vectors[valid])
    words = {} if edits is None else dict(zip(valid.tolist(), edits.tolist(), strict=True))
    by_relevance = np.argsort(-relevance, kind="stable")
    valid, relevance = valid[by_relevance], relevance[by_relevance]
    pool = valid[: opts.change_pool]
    changes = side.changes(found.ids[pool], found.vectors[pool])
    head = mmr_order(relevance[: len(pool)], changes, min(len(pool), 4 * opts.k), opts.diversity)
    in_head = set(head)
    rows = [int(valid[i]) for i in head] + [int(row) for i, row in enumerate(valid) if i not in in_head]
    return Ordered(rows, words)


def in_words(posed: Posed, opts: EngineOptions) -> str:
    """The order `order` gives, as a heading may state it."""
    if getattr(posed.side, "by_words", False):
        first = "fewest changed words first, then distance"
    elif getattr(posed.side, "by_readings", False):
        first = (
            "the asked change first, then fewest unasked things changed (as the index's captions read "
            "them), then distance"
        )
    else:
        first = "by distance to the original"
    return f"{first}, then variety (distinct changes first)" if opts.diversity > 0 else first
