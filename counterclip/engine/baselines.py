"""Stage 8, baselines: what simpler methods would have answered, judged by the same rules, for comparison:
the nearest unlike neighbour (search by the criterion's probe alone, the first valid item in search
order) and the closest valid item among the probe's top ``baseline_pool``."""

from __future__ import annotations

import dataclasses

import numpy as np

from counterclip.engine.candidates import without_query
from counterclip.engine.judge import judge_answers, matching_head_opinion
from counterclip.engine.options import EngineOptions
from counterclip.engine.ordering import order
from counterclip.engine.posing import Posed
from counterclip.engine.resources import Resources
from counterclip.engine.results import ResultItem
from counterclip.engine.verdicts import Evidence
from counterclip.engine.verify import verify


def baselines(
    res: Resources, posed: Posed, evidence: Evidence, opts: EngineOptions
) -> dict[str, list[ResultItem]]:
    """The two baselines, each a list of at most one judged item, keyed by name."""
    side = posed.side
    _, ids = side.collection.search(
        posed.criterion.baseline_probe[None].astype(np.float32), opts.baseline_pool
    )
    ids = ids[0][ids[0] >= 0]
    first = dataclasses.replace(opts, k=1, diversity=0.0)

    def best_of(found) -> list[ResultItem]:  # noqa: ANN001 - Candidates
        verified = verify(res, posed, found, order(posed, found, first), first)
        return judge_answers(res, evidence, posed, verified.answers)

    nearest: list[ResultItem] = []
    for item_id in without_query(side, ids, None).ids:
        nearest = best_of(without_query(side, np.array([item_id]), None))
        if nearest:
            break
    closest = best_of(without_query(side, ids, None))
    found = {"nearest_unlike_neighbour": nearest, f"closest_valid_in_top{opts.baseline_pool}": closest}
    if opts.verify_with:  # re-scored like the answers; the answers' warning alone is shown
        for group in found.values():
            matching_head_opinion(res, posed, group)
    return found
