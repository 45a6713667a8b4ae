"""Stage 9, quality (asked with ``quality=True``): a `counterclip.quality.QualityCard` for every answer,
read against the same card of the nearest unlike neighbour, with a random valid item measured too.

The five measures of a counterfactual answer (`DEFINITIONS` says each in one line):

- faithfulness: the answer and the original re-encoded from their files (texts) by the model under audit
  give the change the result claims (agreement 0-1; where the model has an image-text matching head, the
  share of the two readings that agree);
- understandability: how few things changed: content words (text side), the things besides the asked
  change that the index's captions read differently in the two images (image side, an index with
  captions), else the share of the picture that changed;
- completeness: the share of the gap from the original to the goal the answer closes;
- stability: the share of small perturbations of the query (a JPEG copy of its image, a little noise, a
  paraphrase of its text) under which the answer comes back; for the set, the rank-aware overlap of the
  answer lists;
- contrastivity: the change of p(goal rather than foil) from the original to the answer.

Cost: the answers and the original re-encoded once, one forward pass per perturbation, the matching
head's pairs where there is one; counted in the card (``forward_passes``). A query without
``quality=True`` runs none of it.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any

import numpy as np

from counterclip.engine import quality_measures as measures
from counterclip.engine.candidates import without_query
from counterclip.engine.judge import Judged, judge_answers
from counterclip.engine.options import EngineOptions
from counterclip.engine.ordering import order
from counterclip.engine.posing import Posed
from counterclip.engine.quality_measures import Answer, CountingEncoder, Reading
from counterclip.engine.quality_stability import PERTURBATIONS, Perturbed, perturbed_answers
from counterclip.engine.readings import READINGS, SAMPLE
from counterclip.engine.resources import Resources
from counterclip.engine.results import CounterfactualQuality, ResultItem
from counterclip.engine.verify import Verified, verify
from counterclip.quality import (
    QUALITIES,
    Measure,
    QualityCard,
    aggregate,
    average_overlap,
    not_measured,
    presence_share,
)

NEAREST = "nearest_unlike_neighbour"
RANDOM = "random_valid_item"
RANDOM_SAMPLE = 2048  # index items drawn to find a random valid one
REFERENCE_NAME = "nearest unlike neighbour"

#: What each number of an answer's card is (the understandability line depends on how it was read).
DEFINITIONS: dict[str, str] = {
    "faithfulness": "agreement 0-1 of the change the model gives when the answer and the original are "
    "re-encoded from their files (texts) with the claimed change (the smaller over the larger, 0 when "
    "opposite); with a matching head, the mean with whether the head moves the same way",
    "understandability:words": "content words changed between the original text and the answer",
    "understandability:captions": "things changed besides the asked change: words the index's captions "
    "read the original with that they replace by another value for the answer (light -> dark), over the "
    f"{READINGS} captions the model ranks highest for each (among a fixed sample of "
    f"{SAMPLE} of a larger collection); the asked change (a word of the text "
    "gained; decrease: lost; flip: the target gained or the prediction lost) is named apart, not counted",
    "understandability:picture": f"share of the picture that changed (cells of a {measures.GRID}x"
    f"{measures.GRID} grid whose mean colour moved by more than {measures.CELL_CHANGE})",
    "completeness": "share 0-1 of the gap from the original to the goal the answer closes: in calibrated "
    "p(match) up to the verified line (0.9 a match, 0.1 no match) where a calibration holds, else in the "
    "score up to the index's best match (increase) or typical score (decrease), flip: the target's "
    "probability up to 1",
    "stability": "share of small perturbations of the query (a JPEG copy of its image, pixel noise of 2%, "
    "a paraphrase of its text) under which the answer is returned again; for the set: the rank-aware "
    "overlap of the answer lists",
    "contrastivity": "change -1..1 of p(goal rather than foil) from the original to the answer: the goal "
    "is what the query asks (the text; flip: the target label), the foil what the original is read as "
    "(its best caption; flip: the predicted label); decrease: what the answer is read as, against the text",
}
LOWER_IS_BETTER = {"understandability"}


def assess(
    res: Resources, posed: Posed, verified: Verified, judged: Judged, compared: dict, opts: EngineOptions,
    asked: dict[str, Any],
) -> CounterfactualQuality:  # fmt: skip
    """The quality cards of one counterfactual result.

    Args:
        res, posed, verified, judged, compared, opts: the query's stages so far (`Engine.counterfactuals`).
        asked: the query as given (perturbed copies of it measure stability).

    Returns:
        `CounterfactualQuality`: one card per answer (in rank order), their summary, the references' cards.
    """
    started = time.perf_counter()
    rescoring = CountingEncoder(res.model)  # the model under audit re-scores (not a faster stand-in)
    querying = CountingEncoder(res.encoder)  # the perturbed queries embed as the user's queries do
    ours = [
        Answer(f"answer #{a.item.rank}", a.item, np.asarray(v))
        for a, v in zip(verified.answers, _stored(posed, verified.items), strict=True)
    ]
    refs = _references(dataclasses.replace(res, encoder=rescoring), posed, judged, compared, opts)
    everyone = ours + list(refs.values())
    how, readings = _readings(res, posed, everyone, judged, rescoring)
    perturbed = perturbed_answers(dataclasses.replace(res, encoder=querying), posed, asked, opts)
    readings["stability"] = _stability(everyone, perturbed, refs)
    cards = _cards(everyone, readings, how, nearest=len(ours) if NEAREST in refs else None)
    summary = _summary(cards[: len(ours)], ours, perturbed, readings["stability"], refs)
    passes = rescoring.passes + querying.passes
    return CounterfactualQuality(
        answers=tuple(cards[: len(ours)]),
        summary=dataclasses.replace(summary, forward_passes=passes, seconds=time.perf_counter() - started),
        references=dict(zip(refs, cards[len(ours) :], strict=True)),
        perturbations=tuple(p.name for p in perturbed),
        forward_passes=passes,
        seconds=time.perf_counter() - started,
    )


def _stored(posed: Posed, items: list[ResultItem]) -> np.ndarray:
    """``(n, d)`` the stored vectors of items of the moving side."""
    ids = np.array([item.id for item in items], dtype=np.int64)
    return posed.side.collection.vectors(ids) if len(ids) else np.zeros((0, len(posed.side.start)))


def _readings(
    res: Resources, posed: Posed, everyone: list[Answer], judged: Judged, rescoring: CountingEncoder
) -> tuple[str, dict[str, list[Reading]]]:
    """Every quality but stability, for every answer; and how understandability was read."""
    how, understood = measures.understandability(res, posed, everyone)
    return how, {
        "faithfulness": measures.faithfulness(res, posed, everyone, rescoring),
        "understandability": understood,
        "completeness": measures.completeness(posed, everyone, judged.evidence),
        "contrastivity": measures.contrastivity(res, posed, everyone),
    }


def _references(
    res: Resources, posed: Posed, judged: Judged, compared: dict, opts: EngineOptions
) -> dict[str, Answer]:
    """The nearest unlike neighbour (the baselines' own, when they ran) and a random valid item."""
    refs: dict[str, Answer] = {}
    nearest = compared.get(NEAREST) or []
    if nearest:
        refs[NEAREST] = Answer(REFERENCE_NAME, nearest[0], _stored(posed, nearest[:1])[0])
    drawn = random_valid(res, posed, judged, opts)
    if drawn is not None:
        refs[RANDOM] = Answer("random valid item", drawn, _stored(posed, [drawn])[0])
    return refs


def random_valid(res: Resources, posed: Posed, judged: Judged, opts: EngineOptions) -> ResultItem | None:
    """An item drawn at random (seeded) among those of a sample of the moving collection that pass the
    rule, re-scored and judged like an answer; None when the sample holds none."""
    side = copy.copy(posed.side)
    side.model = res.encoder  # re-scored (and counted) by this query's encoder
    posed = dataclasses.replace(posed, side=side)
    collection = side.collection
    ids = np.asarray(collection.ids, dtype=np.int64)
    rng = np.random.default_rng(0)
    sample = np.sort(ids if len(ids) <= RANDOM_SAMPLE else rng.choice(ids, RANDOM_SAMPLE, replace=False))
    valid = sample[posed.criterion.valid(collection.vectors(sample))] if len(sample) else sample
    pool = without_query(posed.side, valid, None)
    one = dataclasses.replace(opts, k=1, diversity=0.0)
    for row in rng.permutation(len(pool.ids)):
        found = dataclasses.replace(pool, ids=pool.ids[row : row + 1], vectors=pool.vectors[row : row + 1])
        chosen = verify(res, posed, found, order(posed, found, one), one)
        if chosen.answers:
            return judge_answers(res, judged.evidence, posed, chosen.answers)[0]
    return None


def _stability(everyone: list[Answer], perturbed: list[Perturbed], refs: dict[str, Answer]) -> list[Reading]:
    """Per answer: the share of perturbed queries that return it again (the nearest unlike neighbour: as
    their nearest unlike neighbour; a random draw has no stability to speak of)."""
    readings = []
    lists = [p.ids for p in perturbed]
    nearest_lists = [[p.nearest_unlike] for p in perturbed]
    for answer in everyone:
        if answer is refs.get(RANDOM):
            readings.append(Reading(None, "a random draw: drawn again, it is another item"))
            continue
        share = presence_share(answer.item.id, nearest_lists if answer is refs.get(NEAREST) else lists)
        if share is None:
            readings.append(Reading(None, "not measurable: no perturbation applies"))
            continue
        back = [p.name for p, ids in zip(perturbed, lists, strict=True) if answer.item.id in ids]
        sentence = f"returned again under {round(share * len(perturbed))} of {len(perturbed)} small changes"
        readings.append(Reading(share, sentence + (f" ({', '.join(back)})" if back else ""), {"back": back}))
    return readings


def _cards(
    everyone: list[Answer], readings: dict[str, list[Reading]], how: str, nearest: int | None
) -> list[QualityCard]:
    """One card per answer, each measure against the nearest unlike neighbour's (contrastivity: and the
    random valid item's, in its details)."""
    cards = []
    random_row = next((i for i, a in enumerate(everyone) if a.name == "random valid item"), None)
    for row, answer in enumerate(everyone):
        card: dict[str, Measure] = {}
        for quality in QUALITIES:
            reading = readings[quality][row]
            key = f"understandability:{how}" if quality == "understandability" else quality
            reference = readings[quality][nearest].value if nearest is not None and row != nearest else None
            details = dict(reading.details)
            if quality == "contrastivity" and random_row is not None:
                details["random_valid_item"] = readings[quality][random_row].value
            card[quality] = Measure(
                reading.value, DEFINITIONS[key], quality not in LOWER_IS_BETTER, reference,
                REFERENCE_NAME if reference is not None else "", reading.sentence, details,
            )  # fmt: skip
        cards.append(QualityCard(f"{answer.name} (id {answer.item.id})", **card))
    return cards


def _summary(
    cards: list[QualityCard], ours: list[Answer], perturbed: list[Perturbed], stability: list[Reading],
    refs: dict[str, Answer],
) -> QualityCard:  # fmt: skip
    """The answers' mean card; its stability is the rank-aware overlap of the answer lists."""
    if not cards:
        empty = not_measured("no answer", "no answer to judge")
        return QualityCard("no answers", empty, empty, empty, empty, empty)
    summary = aggregate(cards, f"the {len(cards)} answer{'s' if len(cards) > 1 else ''}")
    ids = [a.item.id for a in ours]
    overlaps = [average_overlap(ids, p.ids, len(ids)) for p in perturbed]
    nearest = stability[len(ours)].value if NEAREST in refs else None
    if overlaps:
        value = float(np.mean(overlaps))
        sentence = (
            f"the answer list overlaps {value:.0%} with the lists of {len(overlaps)} slightly changed queries"
        )
        details = dict(zip([p.name for p in perturbed], overlaps, strict=True))
        measure = Measure(
            value, DEFINITIONS["stability"], True, nearest, REFERENCE_NAME if nearest is not None else "",
            sentence, details,
        )  # fmt: skip
        summary = dataclasses.replace(summary, stability=measure)
    return summary


__all__ = ["DEFINITIONS", "PERTURBATIONS", "assess", "random_valid"]
