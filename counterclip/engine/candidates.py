"""Stage 4, gather: the distinct items found around the target path, less the query and its copies."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from counterclip.engine.options import EngineOptions
from counterclip.engine.posing import Posed
from counterclip.engine.sides import Side

DUPLICATE_COS = 0.9999  # a candidate this close to the original is the original (or an exact copy)


@dataclass(frozen=True)
class Candidates:
    """Candidates of one query after filtering: ids, stored vectors, the path step that found each."""

    ids: np.ndarray  # (n,) int64
    vectors: np.ndarray  # (n, d) stored vectors
    steps: np.ndarray | None  # (n,) path step that first found each (None: found otherwise)


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
    """Drop the query itself and exact duplicates of the original."""
    vectors = side.collection.vectors(ids)
    if not len(ids):
        return Candidates(ids, vectors, steps)
    keep = ((vectors @ side.start) < DUPLICATE_COS) & ~side.is_query(ids)
    return Candidates(ids[keep], vectors[keep], steps[keep] if steps is not None else None)
