"""`counterclip eval quality`: the quality card aggregated over a query set, the engine's answers beside the
baselines, and on the shapes world, where every attribute is known, whether each number agrees with the
truth.

Answers (`evaluate_quality`): image side, an indexed image and a caption that changes one attribute of it
(mode increase; unlike ``eval counterfactual``, a query is kept when the index lacks its minimal answer,
so the truth also meets answers that fall short); text side, the image's own caption (mode decrease).
Every query runs with ``quality=True``; the top answer's card, the nearest unlike neighbour's and a
random valid item's are aggregated side by side (`counterclip.quality.aggregate`). Truth, per answer:
the attributes that really changed, whether it has every value the text names (image side) or names a
value the image lacks (text side), whether it is the minimal answer. Agreement: Spearman's rank
correlation of understandability with the attributes that changed (image side: those besides the asked
one, as the card counts them; lower is better, so agreement is
positive); for completeness, stability and contrastivity the AUC of the number separating answers the
truth calls right from the others (0.5 = no agreement).

Maps: `counterclip.evaluation.quality_maps`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from counterclip.engine.engine import Engine
from counterclip.evaluation.counterfactuals import (
    CHANGEABLE,
    FULL,
    _indexed_images,
    _one_attribute_differs,
    _wrong_about,
)
from counterclip.quality import QUALITIES, QualityCard, aggregate, rank_correlation
from counterclip.shapes import ATTRIBUTES, VALUES, ShapeAttrs, caption, parse_caption

OURS, NEAREST, RANDOM = "gradient_path", "nearest_unlike_neighbour", "random_valid_item"
METHODS = (OURS, NEAREST, RANDOM)

#: How each number is checked against the world's truth (copied into every report).
TRUTH = {
    "faithfulness": "none: it checks the model against itself (its re-scored change), not the world",
    "understandability": "Spearman of the number with the attributes that really changed: image side, "
    "those besides the asked one (shape, colour, size, position, background: the card counts the unasked "
    "changes); text side, the attributes the two captions name differently",
    "completeness": "AUC of the number for answers that have every value the text names (image side) or "
    "name a value the image does not have (text side) against the others",
    "stability": "AUC of the number for minimal answers (exactly the asked change) against the others",
    "contrastivity": "AUC of the number for answers that have the asked value and lost the original's "
    "(image side) or name a value the image does not have (text side) against the others",
}


def evaluate_quality(
    engine: Engine,
    labels_file: str | Path,
    n_queries: int = 50,
    seed: int = 0,
    k: int = 5,
    sides: tuple[str, ...] = ("image", "text"),
    progress: Callable[[int, int], None] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """The answers' quality cards over a shapes query set, with the baselines and the truth.

    Args:
        engine: an engine over an index built from a shapes folder.
        labels_file: that folder's ``labels.jsonl``.
        n_queries: queries per side.
        seed: query sampling seed.
        k: answers per query.
        sides: ``image`` and / or ``text``.
        progress: called with ``(done, total)`` after each query.
        **overrides: `EngineOptions` fields for every query.

    Returns:
        JSON-friendly dict: per side, per method the aggregated card, the truth's figures and agreement.
    """
    indexed, _ = _indexed_images(engine, labels_file)
    id_attrs = {image_id: attrs for image_id, attrs, _ in indexed}
    rng = np.random.default_rng(seed)
    report: dict[str, Any] = {"index_images": len(id_attrs), "k": k, "seed": seed, "truth": dict(TRUTH)}
    total = n_queries * len(sides)
    step = _counter(progress, total)
    if "image" in sides:
        queries = _image_queries(indexed, n_queries, rng)
        rows = [_image_rows(engine, id_attrs, query, k, overrides) for query in _stepped(queries, step)]
        report["image_side"] = _side_report(rows)
    if "text" in sides:
        queries = _text_queries(engine, indexed, n_queries, rng)
        rows = [_text_rows(engine, query, k, overrides) for query in _stepped(queries, step)]
        report["text_side"] = _side_report(rows)
    return report


def _counter(progress: Callable[[int, int], None] | None, total: int) -> Callable[[], None]:
    done = {"n": 0}

    def step() -> None:
        done["n"] += 1
        if progress is not None:
            progress(done["n"], total)

    return step


def _stepped(queries: list[Any], step: Callable[[], None]):
    for query in queries:
        yield query
        step()


def _image_queries(indexed, n_queries, rng) -> list[tuple[int, ShapeAttrs, ShapeAttrs, str, str, tuple]]:
    """``(image id, its attributes, the wanted ones, the changed attribute, the text, the named attributes)``;
    unlike ``eval counterfactual`` the index need not hold the minimal answer (the truth then says which
    answers fall short)."""
    queries = []
    for _ in range(n_queries):
        image_id, attrs, _ = indexed[int(rng.integers(len(indexed)))]
        attribute = CHANGEABLE[int(rng.integers(len(CHANGEABLE)))]
        choices = [v for v in VALUES[attribute] if v != getattr(attrs, attribute)]
        wanted = attrs.replace(**{attribute: choices[int(rng.integers(len(choices)))]})
        others = [a for a in FULL if a != attribute]
        extra = list(rng.choice(others, size=int(rng.integers(1, 4)), replace=False))
        named = tuple(a for a in FULL if a == attribute or a in extra)
        queries.append((image_id, attrs, wanted, attribute, caption(wanted, named), named))
    return queries


def _image_rows(engine, id_attrs, query, k, overrides) -> list[dict[str, Any]]:
    """One row per method: its card and the truth about its answer."""
    image_id, attrs, wanted, attribute, text, named = query
    result = engine.counterfactuals(
        image=image_id, text=text, mode="increase", k=k, quality=True, **overrides
    )
    rows = []
    for method, card, item_id in _cards(result):
        other = id_attrs.get(item_id)
        if other is None:
            continue
        changed = sum(getattr(other, a) != getattr(attrs, a) for a in ATTRIBUTES)
        has_named = all(getattr(other, a) == getattr(wanted, a) for a in named)
        contrastive = getattr(other, attribute) == getattr(wanted, attribute)
        truth = {
            "changed": changed,
            # changes the text did not ask for: an answer that changes nothing (the model's mistake) has
            # the fewest changes of all, but it is no counterfactual; this counts only the surplus
            "unasked": changed - int(getattr(other, attribute) != getattr(attrs, attribute)),
            "complete": has_named,
            "minimal": other == wanted,
            "contrastive": contrastive,
        }
        rows.append({"method": method, "card": card, "truth": truth, "id": item_id})
    return rows


def _text_queries(engine, indexed, n_queries, rng) -> list[tuple[int, ShapeAttrs, str]]:
    """``(image id, its attributes, its own caption)``."""
    drawn = [indexed[int(rng.integers(len(indexed)))] for _ in range(n_queries)]
    return [(image_id, attrs, record["caption"]) for image_id, attrs, record in drawn]


def _text_rows(engine, query, k, overrides) -> list[dict[str, Any]]:
    image_id, attrs, own = query
    result = engine.counterfactuals(
        image=image_id, text=own, side="text", mode="decrease", k=k, quality=True, **overrides
    )
    own_named = parse_caption(own)
    rows = []
    for method, card, item_id in _cards(result):
        named = parse_caption(engine.index.captions.meta([item_id])[0]["text"])
        changed = sum(own_named.get(a) != named.get(a) for a in set(own_named) | set(named))
        wrong = _wrong_about(named, attrs)
        truth = {
            "changed": changed,
            "complete": wrong,
            "minimal": wrong and _one_attribute_differs(own_named, named),
            "contrastive": wrong,
        }
        rows.append({"method": method, "card": card, "truth": truth, "id": item_id})
    return rows


def _cards(result) -> list[tuple[str, QualityCard, int]]:
    """``(method, card, answer id)`` for the top answer and each reference the result measured."""
    quality = result.quality
    found = []
    if quality.answers and result.items:
        found.append((OURS, quality.answers[0], result.items[0].id))
    for name, card in quality.references.items():
        found.append((name, card, _id_of(card.subject)))
    return found


def _id_of(subject: str) -> int:
    """The id in a card's subject ("nearest unlike neighbour (id 12)")."""
    return int(subject.rsplit("(id ", 1)[1].rstrip(")"))


def _side_report(rows_per_query: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Per method the aggregated card and the truth's means; the agreement of each number with the truth
    over every answer measured."""
    rows = [row for rows in rows_per_query for row in rows]
    methods: dict[str, Any] = {}
    for method in METHODS:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        card = aggregate([r["card"] for r in mine], f"{method}: {len(mine)} answers")
        methods[method] = {"card": card.to_dict(), "truth": _truth_means(mine), "answers": len(mine)}
    return {
        "queries": len(rows_per_query),
        "methods": methods,
        "agreement": _agreement(rows),
        "paired": _paired(rows_per_query),
    }


def _paired(rows_per_query: list[list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per baseline, over the queries where both it and the engine answered (means over different query
    sets compare different questions): how many those are, in how many the baseline's item is the
    engine's top answer itself (a tie there is no news), and each method's mean of every quality and
    of the truth's figures."""
    paired: dict[str, dict[str, Any]] = {}
    for method in METHODS[1:]:
        both = [
            (by[OURS], by[method])
            for by in ({row["method"]: row for row in rows} for rows in rows_per_query)
            if OURS in by and method in by
        ]
        if not both:
            continue
        paired[method] = {
            "queries": len(both),
            "same_item": sum(ours["id"] == theirs["id"] for ours, theirs in both),
            OURS: _means([ours for ours, _ in both]),
            method: _means([theirs for _, theirs in both]),
        }
    return paired


def _means(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Each quality's mean over the rows that measured it (`aggregate`), and the truth's means."""
    card = aggregate([r["card"] for r in rows], "paired")
    return {"card": {q: m.value for q, m in card.measures().items()}, "truth": _truth_means(rows)}


def _truth_means(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {key: float(np.mean([r["truth"][key] for r in rows])) for key in rows[0]["truth"]}


def _agreement(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """How each number agrees with the truth over every answer (see `TRUTH`)."""
    values = {q: [r["card"].measures()[q].value for r in rows] for q in QUALITIES}
    out: dict[str, float | None] = {"faithfulness": None}
    changed = "unasked" if rows and "unasked" in rows[0]["truth"] else "changed"  # what the card counts
    pairs = [(v, r["truth"][changed]) for v, r in zip(values["understandability"], rows, strict=True)]
    pairs = [(v, t) for v, t in pairs if v is not None]
    out["understandability"] = (
        rank_correlation(*map(np.asarray, zip(*pairs, strict=True))) if len(pairs) > 2 else None
    )
    for quality, key in (
        ("completeness", "complete"),
        ("stability", "minimal"),
        ("contrastivity", "contrastive"),
    ):
        scored = [(v, r["truth"][key]) for v, r in zip(values[quality], rows, strict=True) if v is not None]
        out[quality] = separation_auc([v for v, t in scored if t], [v for v, t in scored if not t])
    return out


def separation_auc(positives: list[float], negatives: list[float]) -> float | None:
    """The probability that a positive's number exceeds a negative's (ties count half); None when a
    class is empty."""
    if not positives or not negatives:
        return None
    pos, neg = np.asarray(positives, dtype=np.float64), np.asarray(negatives, dtype=np.float64)
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)
