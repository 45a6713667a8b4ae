"""Stage 4, gather: the distinct items found around the target path, less the query and its copies."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from counterclip.engine.options import EngineOptions
from counterclip.engine.posing import Posed
from counterclip.engine.sides import Side

# A candidate this close to the original is the original again (a re-encoded copy, a resized twin): never
# an answer, whatever it scores. 0.999 per issue 27; a one-attribute change sits far below it.
DUPLICATE_COS = 0.999


@dataclass(frozen=True)
class Candidates:
    """Candidates of one query after filtering: ids, stored vectors, the path step that found each."""

    ids: np.ndarray  # (n,) int64
    vectors: np.ndarray  # (n, d) stored vectors
    steps: np.ndarray | None  # (n,) path step that first found each (None: found otherwise)
    left_out: dict[str, int] = field(default_factory=dict)  # candidates dropped as the query again, by why


def gather(posed: Posed, path: np.ndarray, opts: EngineOptions) -> Candidates:
    """Distinct items found around the path points, with the first step that found each.

    The origin (step 0) is searched wider: near-original answers that change one thing often lie just
    beyond the original's closest copies, in a direction the steepest path does not take. The path's
    limit (the criterion's target point, step ``len(path)``) is searched too: in a large index the points
    of a short path only see near-copies of the original.
    """
    search = posed.side.collection.search
    queries = path.astype(np.float32)
    rows: list[tuple[int, np.ndarray]] = []
    if opts.candidates_around_origin:
        rows += [(0, row) for row in search(queries[:1], opts.candidates_around_origin)[1]]
    rows += list(enumerate(search(queries, opts.candidates_per_point)[1]))
    target_point = posed.criterion.target_point
    if target_point is not None and opts.candidates_at_target:
        target = target_point[None].astype(np.float32)
        rows += [(len(path), row) for row in search(target, opts.candidates_at_target)[1]]
    first_step: dict[int, int] = {}
    for step, row in rows:
        for item_id in row:
            if item_id >= 0 and int(item_id) not in first_step:
                first_step[int(item_id)] = step
    ids = np.fromiter(first_step.keys(), dtype=np.int64, count=len(first_step))
    steps = np.fromiter(first_step.values(), dtype=np.int64, count=len(first_step))
    return without_query(posed.side, ids, steps)


def without_query(side: Side, ids: np.ndarray, steps: np.ndarray | None) -> Candidates:
    """Drop the query itself and its copies (the side's own test, and any embedding within `DUPLICATE_COS`
    of the original), counted by why."""
    vectors = side.collection.vectors(ids)
    if not len(ids):
        return Candidates(ids, vectors, steps)
    why = side.copies_of_query(ids)
    same_embedding = (vectors @ side.start) >= DUPLICATE_COS
    why = [
        w or ("the same embedding (cosine >= 0.999)" if s else None)
        for w, s in zip(why, same_embedding, strict=True)
    ]
    keep = np.array([w is None for w in why], dtype=bool)
    left_out = dict(Counter(w for w in why if w is not None))
    return Candidates(ids[keep], vectors[keep], steps[keep] if steps is not None else None, left_out)
