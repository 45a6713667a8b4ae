"""Stage 7, judge: a verdict on every answer (verified, weak, unverifiable), the query's warnings, and the
second verifier's opinion where one is asked. The rules and their words live in `verdicts`; this stage
gathers the evidence a query needs (its calibration, its doubts, the rival captions of its text)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from counterclip.engine.domain import domain_doubt, unchecked_words
from counterclip.engine.options import EngineOptions
from counterclip.engine.posing import Posed
from counterclip.engine.request import indexed_image, query_pil
from counterclip.engine.resources import Resources
from counterclip.engine.results import ResultItem
from counterclip.engine.verdicts import MATCH, NO_MATCH, Evidence, query_warnings, second_opinion
from counterclip.engine.verify import Rescored, Verified
from counterclip.engine.words import Substitutes, entails


@dataclass(frozen=True)
class Judged:
    """The answers with their verdicts, the evidence they were judged on, and the query's warnings."""

    items: list[ResultItem]
    evidence: Evidence
    warnings: list[str]
    original: dict[str, Any]  # the original pair as the model reads it (`CounterfactualResult.original`)


def query_evidence(res: Resources, posed: Posed, opts: EngineOptions) -> Evidence:
    """The calibration the options ask for, with this query's readings: doubting words outside the
    calibration's domain, the original's p(match) and whether it already is past the verified line, the
    asked text and the captions' substitutes (an answer's own caption may contradict it), and the index's
    one-word swaps of the asked text (a rival caption the model prefers)."""
    calibration = res.evidence(opts.calibration)
    criterion = posed.criterion
    evidence = calibration.doubting(domain_doubt(posed.texts, res.lexicon, calibration.calibration))
    before = evidence.p_match(float(criterion.match_score(posed.side.start[None])[0]))
    asked = criterion.validity.target or posed.texts[0]
    query_id = (posed.query.get("image") or {}).get("id")
    own = own_captions(res, [query_id]).get(query_id, []) if query_id is not None else []
    evidence = evidence.for_query(
        before=before,
        settled=settled(posed, before, own, res.substitutes) if evidence.usable else None,
        min_effect=opts.min_effect,
        asked=asked,
        substitutes=res.substitutes,
    )
    swaps = res.swaps
    if swaps is None or posed.side.kind != "image" or not criterion.wants_match:
        return evidence
    ids = np.asarray(swaps.of(asked), dtype=np.int64)
    if not len(ids):
        return evidence
    rivals = [m["text"] for m in res.index.captions.meta(ids)]
    return evidence.with_rivals(res.index.captions.vectors(ids), rivals)


def settled(
    posed: Posed, before: float | None, own: list[str], substitutes: Substitutes | None
) -> str | None:
    """The original already is past the verified line for the goal, in words (None when it is not): by the
    calibrated p(match), or by what the index's own captions of the original image say."""
    if posed.criterion.mode == "flip":
        return None  # flip: an image already of the target class is refused when the query is posed
    text, wants_match = posed.texts[0], posed.criterion.wants_match
    if wants_match and before is not None and before >= MATCH:
        return f"the original already matches {text!r} (p(match) {before:.2f}): nothing to add"
    if not wants_match and before is not None and before <= NO_MATCH:
        return f"the original already does not match {text!r} (p(match) {before:.2f}): nothing to take away"
    if wants_match:
        said = next((caption for caption in own if entails(caption, text)), None)
        if said:
            return f"the index's own caption of the original, {said!r}, already says {text!r}: nothing to add"
    elif substitutes is not None:
        clash = next((c for c in own if substitutes.contradiction(text, c)), None)
        if clash:
            return (
                f"the index's own caption of the original, {clash!r}, already contradicts {text!r}: nothing "
                "to take away"
            )
    return None


def own_captions(res: Resources, image_ids: list[int]) -> dict[int, list[str]]:
    """What the index's own captions (sidecars, captions files) say of these images."""
    texts_of_images = getattr(res.index.captions, "texts_of_images", None)
    if texts_of_images is None or not image_ids or not res.index.captions.count:
        return {}
    return texts_of_images(image_ids)


def judge_answers(
    res: Resources, evidence: Evidence, posed: Posed, answers: list[Rescored]
) -> list[ResultItem]:
    """Set each answer's verdict, p(match), rival and reason; the items in order. An image answer's own
    captions (sidecars, captions files) are what the index itself says of it."""
    items = [answer.item for answer in answers]
    own = own_captions(res, [item.id for item in items]) if posed.side.kind == "image" else {}
    for answer in answers:
        captions = own.get(answer.item.id, [])
        evidence.judge(answer.item, posed.criterion, answer.vector, answer.rescored, captions)
    if posed.criterion.mode == "flip":
        for answer in answers:
            probabilities = posed.criterion.probabilities(answer.vector[None])[0]
            answer.item.probabilities = dict(
                zip(posed.criterion.labels, map(float, probabilities), strict=True)
            )
    return items


def judge(res: Resources, posed: Posed, verified: Verified, opts: EngineOptions) -> Judged:
    """Verdicts on the answers, the query's warnings (most important first), the second opinion."""
    evidence = query_evidence(res, posed, opts)
    items = judge_answers(res, evidence, posed, verified.answers)
    rivalled = [repr(item.rival) for item in items if item.rival]
    tokens, context = res.token_counts(posed.texts)
    warnings = query_warnings(posed.texts, posed.criterion, evidence, res.lexicon, tokens, context, rivalled)
    warnings += [w for w in [unchecked_words(posed.texts, res.lexicon, evidence.calibration)] if w]
    warnings += [w for w in [copies_warning(verified.left_out)] if w]
    if opts.verify_with:
        warning = matching_head_opinion(res, posed, items)
        warnings += [warning] if warning else []
    return Judged(items, evidence, warnings, original_reading(posed, evidence))


ITSELF = ("the query itself", "the query's text")  # the query's own entry: left out, never a "copy"


def copies_left_out(left_out: dict[str, int]) -> dict[str, int]:
    """The candidates left out as copies of the query, by why: the query's own entry is no news (an
    answer is never the query) and is not counted."""
    return {why: n for why, n in left_out.items() if why not in ITSELF}


def copies_warning(left_out: dict[str, int]) -> str | None:
    """ "2 copies of the original left out (...)": candidates that were the query again under another name."""
    copies = copies_left_out(left_out)
    if not copies:
        return None
    total = sum(copies.values())
    ways = ", ".join(f"{n} as {why}" for why, n in sorted(copies.items()))
    return f"{total} {'copy' if total == 1 else 'copies'} of the original left out ({ways})"


def original_reading(posed: Posed, evidence: Evidence) -> dict[str, Any]:
    """The original's pair score, p(match) and (flip) class probability, and whether it is settled."""
    criterion = posed.criterion
    reading: dict[str, Any] = {
        "score": float(criterion.match_score(posed.side.start[None])[0]),
        "p_match": evidence.before,
        "settled": evidence.settled,
    }
    if criterion.mode == "flip":
        reading["class_probability"] = criterion.original
    return reading


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
