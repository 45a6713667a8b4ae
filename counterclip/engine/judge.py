"""Stage 7, judge: a verdict on every answer (verified, weak, unverifiable), the query's warnings, and the
second verifier's opinion where one is asked. The rules and their words live in `verdicts`; this stage
gathers the evidence a query needs (its calibration, its doubts, the rival captions of its text)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from counterclip.engine.options import EngineOptions
from counterclip.engine.posing import Posed
from counterclip.engine.request import indexed_image, query_pil
from counterclip.engine.resources import Resources
from counterclip.engine.results import ResultItem
from counterclip.engine.verdicts import Evidence, misspelt, query_warnings, second_opinion
from counterclip.engine.verify import Rescored


@dataclass(frozen=True)
class Judged:
    """The answers with their verdicts, the evidence they were judged on, and the query's warnings."""

    items: list[ResultItem]
    evidence: Evidence
    warnings: list[str]


def query_evidence(res: Resources, posed: Posed, opts: EngineOptions) -> Evidence:
    """The calibration the options ask for, doubting misspelt words, checking image answers against the
    index's one-word swaps of the asked text (a rival caption the model prefers)."""
    evidence = res.evidence(opts.calibration).doubting(misspelt(posed.texts, res.lexicon))
    swaps, criterion = res.swaps, posed.criterion
    if swaps is None or posed.side.kind != "image" or not criterion.wants_match:
        return evidence
    ids = np.asarray(swaps.of(criterion.validity.target or posed.texts[0]), dtype=np.int64)
    if not len(ids):
        return evidence
    rivals = [m["text"] for m in res.index.captions.meta(ids)]
    return evidence.with_rivals(res.index.captions.vectors(ids), rivals)


def judge_answers(evidence: Evidence, posed: Posed, answers: list[Rescored]) -> list[ResultItem]:
    """Set each answer's verdict, p(match) and rival; the items in order."""
    for answer in answers:
        evidence.judge(answer.item, posed.criterion, answer.vector, answer.rescored)
    return [answer.item for answer in answers]


def judge(res: Resources, posed: Posed, answers: list[Rescored], opts: EngineOptions) -> Judged:
    """Verdicts on the answers, the query's warnings (most important first), the second opinion."""
    evidence = query_evidence(res, posed, opts)
    items = judge_answers(evidence, posed, answers)
    rivalled = [repr(item.rival) for item in items if item.rival]
    tokens, context = res.token_counts(posed.texts)
    warnings = query_warnings(posed.texts, posed.criterion, evidence, res.lexicon, tokens, context, rivalled)
    if opts.verify_with:
        warning = matching_head_opinion(res, posed, items)
        warnings += [warning] if warning else []
    return Judged(items, evidence, warnings)


def matching_head_opinion(res: Resources, posed: Posed, answers: list[ResultItem]) -> str | None:
    """Re-score every answer with the model's matching head (``item.p_itm``): the image-side answers'
    files against the text (flip: the target label), the text-side captions against the query image."""
    if not answers:
        return None
    text = posed.query.get("target") or posed.query.get("text")
    if posed.side.name == "image":
        pils = [indexed_image(res.index, item.path) if item.path else None for item in answers]
        pairs = [(pil, text) for pil in pils]
    else:
        query_image = query_pil(res.index, posed.image)
        pairs = [(query_image, item.text) for item in answers]
    scorable = [i for i, (pil, caption) in enumerate(pairs) if pil is not None and caption]
    p_itm: list[float | None] = [None] * len(answers)
    if scorable:
        scored = res.model.match_head([pairs[i][0] for i in scorable], [pairs[i][1] for i in scorable])
        for i, p in zip(scorable, scored, strict=True):
            p_itm[i] = float(p)
    return second_opinion(answers, p_itm, posed.criterion.wants_match)
