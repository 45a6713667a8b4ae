"""Stage 8, baselines: what simpler methods would have answered, for comparison, each judged by the same
verdict rules as the answers:

- the nearest unlike neighbour, in its textbook sense (Nugent et al. 2009; Keane & Smyth 2020): the item
  nearest the original whose model decision differs from the original's, toward the goal (a pair the
  model calls a match, p(match) >= 0.5, for increase; not a match for decrease; the target label
  predicted, for flip), looked for among the original's 512 nearest items. It uses neither the target
  path nor the engine's verified line, so it shows what the plain decision boundary gives;
- the first valid text match: the first item that passes the rule when searching by the criterion's
  probe alone (the text; flip: the target label), ignoring the original;
- the valid item closest to the original among the probe's top ``baseline_pool``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from counterclip.engine.candidates import Candidates, without_query
from counterclip.engine.judge import judge_answers, matching_head_opinion
from counterclip.engine.options import EngineOptions
from counterclip.engine.ordering import order
from counterclip.engine.posing import Posed
from counterclip.engine.resources import Resources
from counterclip.engine.results import ResultItem
from counterclip.engine.verdicts import Evidence
from counterclip.engine.verify import Rescored, rescore, rescored_item, stale_cosine, verify

NEAREST_UNLIKE = "nearest_unlike_neighbour"
FIRST_TEXT_MATCH = "first_valid_text_match"
UNLIKE_DEPTHS = (64, 512)  # neighbours of the original searched, deeper only when none is unlike (a
# deeper search re-ranks thousands of rows on every store: 4096 made a LanceDB counterfactual 3x slower)
CHUNK = 512  # stored vectors read at a time while looking for the first unlike neighbour
DECISION = 0.5  # the model's own decision: at or above this p(match) it calls the pair a match


def baselines(
    res: Resources, posed: Posed, evidence: Evidence, opts: EngineOptions
) -> dict[str, list[ResultItem]]:
    """The baselines, each a list of at most one judged item, keyed by name."""
    side = posed.side
    _, ids = side.collection.search(
        posed.criterion.baseline_probe[None].astype(np.float32), opts.baseline_pool
    )
    ids = ids[0][ids[0] >= 0]
    first = dataclasses.replace(opts, k=1, diversity=0.0)

    def best_of(found: Candidates) -> list[ResultItem]:
        verified = verify(res, posed, found, order(posed, found, first), first)
        return judge_answers(res, evidence, posed, verified.answers)

    text_match: list[ResultItem] = []
    for item_id in without_query(side, ids, None).ids:
        text_match = best_of(without_query(side, np.array([item_id]), None))
        if text_match:
            break
    found = {
        NEAREST_UNLIKE: nearest_unlike(res, posed, evidence, opts),
        FIRST_TEXT_MATCH: text_match,
        f"closest_valid_in_top{opts.baseline_pool}": best_of(without_query(side, ids, None)),
    }
    if opts.verify_with:  # re-scored like the answers; the answers' warning alone is shown
        for group in found.values():
            matching_head_opinion(res, posed, group)
    return found


def unlike(posed: Posed, evidence: Evidence, vectors: np.ndarray) -> np.ndarray:
    """``(n,)`` bool: which of the moving side's vectors the model decides about unlike the original,
    toward the goal. Flip: the target label is predicted. Increase / decrease: p(match) on the other side
    of `DECISION` and the score moved the goal's way; without an informative calibration the model has
    no decision of its own and the rule's line stands in for it."""
    criterion = posed.criterion
    calibration = evidence.calibration
    if criterion.mode == "flip" or calibration is None or not calibration.informative:
        return np.asarray(criterion.valid(vectors), dtype=bool)
    scores = np.asarray(criterion.match_score(vectors), dtype=np.float64)
    p = calibration.probability(scores)
    if criterion.wants_match:
        return (p >= DECISION) & (scores > criterion.original)
    return (p < DECISION) & (scores < criterion.original)


def nearest_unlike(res: Resources, posed: Posed, evidence: Evidence, opts: EngineOptions) -> list[ResultItem]:
    """The nearest unlike neighbour, re-scored from its source and judged (``[]`` when none of the
    original's `UNLIKE_DEPTHS`[-1] nearest neighbours is unlike it). An entry whose source changed since
    indexing, or whose re-scored vector is no longer unlike, gives way to the next."""
    if _no_match_anywhere(posed, evidence):
        return []
    side = posed.side
    total = int(side.collection.count)
    stale_cos = stale_cosine(res.index, res.encoder)
    seen: set[int] = set()
    for depth in UNLIKE_DEPTHS:
        _, ids = side.collection.search(side.start[None].astype(np.float32), min(depth, total))
        ids = np.array([i for i in ids[0] if i >= 0 and int(i) not in seen], dtype=np.int64)
        seen.update(int(i) for i in ids)
        for chunk in range(0, len(ids), CHUNK):  # nearest first: stop reading vectors at the first found
            found = without_query(side, ids[chunk : chunk + CHUNK], None)
            chosen = _first_unlike(posed, evidence, found, opts.verify, stale_cos)
            if chosen is not None:
                chosen.item.rank = 1
                return judge_answers(res, evidence, posed, [chosen])
        if depth >= total:
            break
    return []


def _no_match_anywhere(posed: Posed, evidence: Evidence) -> bool:
    """Increase: even the best score the index holds for the text is no match by the model's decision,
    so no item can be unlike the original (known without searching the original's neighbours)."""
    criterion, calibration = posed.criterion, evidence.calibration
    if criterion.mode != "increase" or calibration is None or not calibration.informative:
        return False
    best = criterion.best_match_score
    return best is not None and float(calibration.probability(best)) < DECISION


def _first_unlike(
    posed: Posed, evidence: Evidence, found: Candidates, verify_source: bool, stale_cos: float
) -> Rescored | None:
    """The first of ``found`` (in order) that is unlike the original on its stored vector and, re-scored
    from its source, still is; None when none is."""
    for row in np.flatnonzero(unlike(posed, evidence, found.vectors)):
        fresh, reason = rescore(posed, found, [row], stale_cos)[0] if verify_source else (None, None)
        if reason is not None:
            continue
        if fresh is not None and not bool(unlike(posed, evidence, fresh[None])[0]):
            continue
        return rescored_item(posed, found, int(row), fresh)
    return None
