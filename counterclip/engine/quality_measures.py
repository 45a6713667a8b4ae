"""What the quality stage reads of each counterfactual answer (and of each baseline answer, the same way):
faithfulness, understandability, completeness and contrastivity, each as a `Reading` (a number, a plain
sentence, the figures behind it). Stability needs the query again and lives in `quality_stability`; the
stage that puts the readings on cards beside their references is `quality`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image

from counterclip.engine.posing import Posed, make_side
from counterclip.engine.readings import READINGS, split_changes
from counterclip.engine.request import indexed_image, query_pil
from counterclip.engine.resources import Resources
from counterclip.engine.results import ResultItem
from counterclip.engine.sides import as_array
from counterclip.engine.verdicts import MATCH, NO_MATCH, Evidence
from counterclip.engine.words import content_words, entails
from counterclip.quality import agreement, gap_share, pair_probability

GRID = 8  # the picture proxy's grid of cells (GRID x GRID)
CELL_CHANGE = 0.1  # a cell whose mean colour moves more than this (0-1 range) changed


class CountingEncoder:
    """An encoder (or model) that counts the items it encodes: the card's forward passes."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.passes = 0

    def count(self, passes: int) -> None:
        """Count passes made outside the two encode calls (a matching head's)."""
        self.passes += int(passes)

    def encode_pil(self, images: list[Image.Image]) -> Any:
        self.count(len(images))
        return self.inner.encode_pil(images)

    def encode_texts(self, texts: list[str]) -> Any:
        self.count(len(texts))
        return self.inner.encode_texts(texts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass(frozen=True)
class Answer:
    """One answer the stage measures: its name on the card, the item, its stored vector."""

    name: str  # "answer #1", "nearest unlike neighbour", "random valid item"
    item: ResultItem
    vector: np.ndarray  # (d,) the stored vector of the moving side


@dataclass(frozen=True)
class Reading:
    """One quality of one answer, before it meets its reference."""

    value: float | None
    sentence: str
    details: dict[str, Any] = field(default_factory=dict)


# --- faithfulness ------------------------------------------------------------------------------------


def faithfulness(res: Resources, posed: Posed, answers: list[Answer], model: Any) -> list[Reading]:
    """The change the model itself gives, the answer and the original re-encoded from their files (or
    texts) by ``model`` (a counting wrapper of the model under audit), against the claimed change; and
    where the model has a matching head, whether the head moves the same way."""
    criterion = posed.criterion
    fresh = _fresh_side(res, posed, model)
    again = fresh.reencode(np.array([a.item.id for a in answers], dtype=np.int64)) if answers else []
    start = _fresh_start(res, posed, model)
    heads = _head_moves(res, posed, answers, model)
    readings = []
    for answer, (vector, reason), head in zip(answers, again, heads, strict=True):
        claimed = answer.item.score_after - (answer.item.score_before or 0.0)
        if vector is None or start is None:
            why = reason or (
                "no file to re-score it from" if vector is None else "the original is unreadable"
            )
            readings.append(Reading(None, f"not measurable: {why}"))
            continue
        measured = float(criterion.score(vector[None])[0] - criterion.score(start[None])[0])
        score_agreement = agreement(claimed, measured)
        parts = [score_agreement] + ([head] if head is not None else [])
        details = {"claimed_change": claimed, "rescored_change": measured, "score_agreement": score_agreement}
        sentence = (
            f"re-encoded from its source, the model gives {measured:+.3g} for the claimed {claimed:+.3g}"
        )
        if head is not None:
            details["matching_head_agrees"] = bool(head)
            sentence += "; the matching head " + ("agrees" if head else "disagrees")
        readings.append(Reading(float(np.mean(parts)), sentence, details))
    return readings


def _fresh_side(res: Resources, posed: Posed, model: Any) -> Any:
    """The moving side again, re-encoding with ``model`` (the query itself is not excluded here)."""
    measuring = replace(res, encoder=model)
    return make_side(measuring, posed.side.name, posed.side.start, None, posed.texts[0], res.defaults)


def _fresh_start(res: Resources, posed: Posed, model: Any) -> np.ndarray | None:
    """The original's moving vector re-encoded by ``model``: the query image from its file (image side,
    flip), the query text (text side); None when the image cannot be read."""
    if posed.side.name == "text":
        return as_array(model.encode_texts([posed.texts[0]]))[0]
    pil = query_pil(res.index, posed.image)
    return None if pil is None else as_array(model.encode_pil([pil]))[0]


def _head_moves(res: Resources, posed: Posed, answers: list[Answer], model: Any) -> list[bool | None]:
    """Per answer: whether the model's image-text matching head moves the way the goal asks from the
    original to the answer (None when the model has no head, or a pair has no image)."""
    head = getattr(res.model, "match_head", None)
    if head is None or not answers or head([], []) is None:
        return [None] * len(answers)
    text = posed.query.get("target") or posed.query.get("text")
    query_image = query_pil(res.index, posed.image)
    if posed.side.name == "image":
        pairs = [(query_image, text)] + [(_answer_image(res, a), text) for a in answers]
    else:
        pairs = [(query_image, posed.texts[0])] + [(query_image, a.item.text) for a in answers]
    if any(pil is None or not caption for pil, caption in pairs):
        return [None] * len(answers)
    readings = [float(p) for p in head([pil for pil, _ in pairs], [caption for _, caption in pairs])]
    model.count(len(pairs))
    sign = 1.0 if posed.criterion.wants_match else -1.0
    return [sign * (p - readings[0]) > 0 for p in readings[1:]]


def _answer_image(res: Resources, answer: Answer) -> Image.Image | None:
    return indexed_image(res.index, answer.item.path) if answer.item.path else None


# --- understandability -------------------------------------------------------------------------------


def understandability(res: Resources, posed: Posed, answers: list[Answer]) -> tuple[str, list[Reading]]:
    """How few things changed, and how it was read: ``words`` (the text side: content words of the
    original text against the answer), ``captions`` (the image side where the index holds captions and
    the model's readings of its images in them hold: the words they read the two images with besides
    the asked change), ``picture`` (otherwise: the share of the picture that changed)."""
    if posed.side.name == "text":
        return "words", [_words_changed(posed.texts[0], a.item.text or "") for a in answers]
    reader = res.caption_reader
    if reader is not None:
        original, *read = reader.read(np.stack([posed.side.start] + [a.vector for a in answers]))
        asked = getattr(posed.side, "gain", frozenset()), getattr(posed.side, "lose", frozenset())
        return "captions", [_reading_changes(reader.changes(original, answer), *asked) for answer in read]
    query = query_pil(res.index, posed.image)
    return "picture", [_picture_change(query, _answer_image(res, a)) for a in answers]


def _words_changed(original: str, answer: str) -> Reading:
    """Content words changed: the larger of the words added and the words taken away."""
    before, after = Counter(content_words(original)), Counter(content_words(answer))
    removed, added = sorted((before - after).elements()), sorted((after - before).elements())
    changed = max(len(removed), len(added))
    said = ", ".join(removed) or "nothing"
    sentence = (
        f"{changed} word{'' if changed == 1 else 's'} changed ({said} -> {', '.join(added) or 'nothing'})"
    )
    return Reading(float(changed), sentence, {"removed": removed, "added": added})


def _reading_changes(changes: list[tuple[str, str]], gain: frozenset[str], lose: frozenset[str]) -> Reading:
    """The things changed besides the asked change (which any answer must make: counting it would favour
    answers whose readings miss it), with the asked change named apart."""
    asked, unasked = split_changes(changes, gain, lose)
    count = len(unasked)
    said = ", ".join(f"{a} -> {b}" for a, b in unasked) or "nothing the captions name"
    shown = (
        "the asked change: " + ", ".join(f"{a} -> {b}" for a, b in asked)
        if asked
        else "the captions do not read the asked change in it"
    )
    return Reading(
        float(count),
        f"{count} other thing{'' if count == 1 else 's'} changed ({said}); {shown}",
        {"changes": [list(c) for c in changes], "asked": [list(c) for c in asked]},
    )


def picture_change(first: Image.Image, second: Image.Image) -> float:
    """The share of `GRID` x `GRID` cells whose mean colour moves more than `CELL_CHANGE` between two
    images (both shrunk to the same size)."""
    side = GRID * 8
    cells = [
        (np.asarray(im.convert("RGB").resize((side, side), Image.BILINEAR), dtype=np.float64) / 255.0)
        .reshape(GRID, 8, GRID, 8, 3)
        .mean(axis=(1, 3))
        for im in (first, second)
    ]
    return float((np.abs(cells[0] - cells[1]).max(axis=-1) > CELL_CHANGE).mean())


def _picture_change(query: Image.Image | None, answer: Image.Image | None) -> Reading:
    if query is None or answer is None:
        return Reading(None, "not measurable: an image could not be read")
    share = picture_change(query, answer)
    return Reading(share, f"{share:.0%} of the picture changed")


# --- completeness ------------------------------------------------------------------------------------


def completeness(posed: Posed, answers: list[Answer], evidence: Evidence) -> list[Reading]:
    """The share of the gap to the goal each answer closes: in calibrated p(match) up to the verified line
    where a calibration holds, else in the rule's own numbers."""
    criterion, validity = posed.criterion, posed.criterion.validity
    readings = []
    for answer in answers:
        item = answer.item
        if evidence.before is not None and item.p_match is not None:
            goal = MATCH if criterion.wants_match else NO_MATCH
            before, after, what = evidence.before, item.p_match, "p(match)"
        elif criterion.mode == "flip":
            goal, before, after, what = 1.0, criterion.original, item.score_after, "the target's probability"
        else:
            best, typical = validity.best, validity.typical
            goal = best if criterion.wants_match else typical
            before, after, what = criterion.original, item.score_after, "score"
        toward = 1.0 if criterion.wants_match else -1.0
        if goal is None or (goal - before) * toward <= 0:
            readings.append(Reading(None, "not measurable: the original already is past the goal"))
            continue
        share = float(gap_share(before, after, goal))
        sentence = f"closes {share:.0%} of the way from {before:.3g} to {goal:.3g} ({what})"
        readings.append(
            Reading(share, sentence, {"before": before, "after": after, "goal": goal, "in": what})
        )
    return readings


# --- contrastivity -----------------------------------------------------------------------------------


def contrastivity(res: Resources, posed: Posed, answers: list[Answer]) -> list[Reading]:
    """How far each answer moves toward the goal and away from the foil: the change of ``p(goal | goal
    or foil)`` from the original to the answer (see `contrast_pair` for the goal and the foil)."""
    score = res.pair_score
    readings = []
    for answer in answers:
        pair = contrast_pair(res, posed, answer)
        if pair is None:
            readings.append(Reading(None, "not measurable: no caption names what the answer is instead"))
            continue
        (goal, goal_name), (foil, foil_name) = pair
        moving = np.stack([posed.side.start, answer.vector])
        p = pair_probability(score.against(moving, goal), score.against(moving, foil))
        change = float(p[1] - p[0])
        sentence = f"p({goal_name} rather than {foil_name}) {p[0]:.2f} -> {p[1]:.2f}"
        details = {"goal": goal_name, "foil": foil_name, "before": float(p[0]), "after": float(p[1])}
        readings.append(Reading(change, sentence, details))
    return readings


Named = tuple[np.ndarray, str]


def contrast_pair(res: Resources, posed: Posed, answer: Answer) -> tuple[Named, Named] | None:
    """The goal and the foil an answer is read against, as ``((vector, name), (vector, name))``:
    increase, image side: the text against what the original is read as (its best caption that does not
    say the text; without captions the original itself); decrease, image side: what the answer is read
    as against the text; text side: the query image against the image the original text (increase) or
    the answer (decrease, reversed) describes best; flip: the target label against the predicted one."""
    criterion, query = posed.criterion, posed.query
    if criterion.mode == "flip":
        labels = list(query["labels"])
        return (
            (criterion.label_vecs[labels.index(query["target"])], repr(query["target"])),
            (criterion.label_vecs[labels.index(query["predicted"])], repr(query["predicted"])),
        )
    text = posed.texts[0]
    if posed.side.name == "image":
        if criterion.wants_match:
            read = best_caption(res, posed.side.start, avoid=text)
            return (criterion.fixed, repr(text)), read or (posed.side.start, "the original")
        read = best_caption(res, answer.vector, avoid=text)
        return None if read is None else (read, (criterion.fixed, repr(text)))
    image = (criterion.fixed, "the query image")
    if criterion.wants_match:
        other = best_image(res, posed, posed.side.start, f"the image {text!r} describes best")
        return None if other is None else (image, other)
    other = best_image(res, posed, answer.vector, f"the image {answer.item.text!r} describes best")
    return None if other is None else (other, image)


def best_caption(res: Resources, vector: np.ndarray, avoid: str) -> Named | None:
    """The index's caption the model ranks highest for a vector among those that do not say ``avoid``."""
    if not res.index.captions.count:
        return None
    _, ids = res.index.captions.search(vector[None].astype(np.float32), READINGS)
    found = [int(i) for i in ids[0] if i >= 0]
    for meta, caption_vector in zip(
        res.index.captions.meta(found), res.index.captions.vectors(found), strict=True
    ):
        if not entails(meta["text"], avoid):
            return np.asarray(caption_vector), repr(meta["text"])
    return None


def best_image(res: Resources, posed: Posed, text_vector: np.ndarray, name: str) -> Named | None:
    """The index's image a text vector scores highest, other than the query image (None: there is none)."""
    query_id = (posed.query.get("image") or {}).get("id")
    _, ids = res.index.images.search(text_vector[None].astype(np.float32), 2)
    chosen = next((int(i) for i in ids[0] if i >= 0 and int(i) != query_id), None)
    return None if chosen is None else (np.asarray(res.index.images.vectors([chosen])[0]), name)
