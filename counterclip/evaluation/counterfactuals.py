"""Measured counterfactual quality on a shapes-world index (every attribute is known, so it is measurable).

Image side: an indexed image plus a caption that changes exactly one attribute ("a large red circle on the
left" -> "a large blue circle on the left"), mode increase. A *hit* has the asked value; a *minimal* answer
has the asked value and every other attribute unchanged. Text side: the image's own caption, mode
decrease; a minimal answer is a caption that differs from it in exactly one named attribute. Queries are
drawn only where the index holds at least one minimal answer.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from counterclip.engine.engine import Engine
from counterclip.engine.results import CounterfactualResult, ResultItem
from counterclip.shapes import VALUES, ShapeAttrs, attrs_of, caption, parse_caption, read_labels

LOG = logging.getLogger(__name__)
CHANGEABLE = ("shape", "colour", "size", "position")
FULL = ("size", "colour", "shape", "position")
OURS = "gradient_path"

#: What each figure of the report measures (copied into every report, so a saved one explains itself).
DEFINITIONS = {
    "hit_at_1": "image side: the top result has the asked attribute value; text side: the top caption "
    "names a value the image does not have",
    "minimal_at_1": "image side: asked value and every other attribute unchanged; text side: a hit that "
    "differs from the original caption in exactly one attribute (one value changed, or one wrong "
    "attribute added)",
    "minimal_swap_at_1": "text side, strict: same attributes named, exactly one value changed",
    "absent_verified_rate": "image side, increase: share of queries whose text names a combination "
    "the index does not hold that still return at least one 'verified' answer (should be near 0)",
    "present_verified_right_rate": "the same for combinations the index holds: share whose top answer "
    "is 'verified' and has every value the text names",
    "distinct_changes_at_4": "image side, decrease on the image's full caption: distinct attributes "
    "changed among the top 4 answers (mean over queries)",
    "one_attribute_rate": "share of those answers that change exactly one attribute of the image",
}

#: The parts of the evaluation each choice of ``counterclip eval counterfactual --side`` runs.
SIDE_CHOICES: dict[str, tuple[str, ...]] = {
    "both": ("image", "text"),
    "all": ("image", "text", "verdicts", "diversity"),
    "image": ("image",),
    "text": ("text",),
    "verdicts": ("verdicts",),
    "diversity": ("diversity",),
}


def _one_attribute_apart(a: dict[str, str], b: dict[str, str]) -> bool:
    """Same attributes named, exactly one value changed (the strict reading of "minimal")."""
    return a.keys() == b.keys() and sum(a[k] != b[k] for k in a) == 1


def _one_attribute_differs(a: dict[str, str], b: dict[str, str]) -> bool:
    """Exactly one attribute differs: one value changed, or one attribute named in only one of them.

    Template words ("a photo of") are not attributes.
    """
    return sum(a.get(k) != b.get(k) for k in set(a) | set(b)) == 1


def _wrong_about(named: dict[str, str], attrs: ShapeAttrs) -> bool:
    """The caption names at least one value the image does not have (dropping an attribute from a true
    caption leaves a true caption: one attribute differs, yet it is no counterfactual)."""
    return any(getattr(attrs, attribute) != value for attribute, value in named.items())


def _summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Rates and means over per-query records of one method."""
    n = len(records)
    if n == 0:
        return {"queries": 0}
    returned = sum(r["returned"] for r in records)
    latencies = [r["latency"] for r in records if r.get("latency") is not None]
    distances = [r["distance"] for r in records if r["distance"] is not None]
    diversities = [r["diversity"] for r in records if r["diversity"] is not None]
    out = {
        "queries": n,
        "answered_rate": float(np.mean([r["returned"] > 0 for r in records])),
        "verified_rate": (sum(r["verified"] for r in records) / returned) if returned else None,
        "hit_at_1": float(np.mean([r["hit"] for r in records])),
        "minimal_at_1": float(np.mean([r["minimal"] for r in records])),
        **(
            {"minimal_swap_at_1": float(np.mean([r["minimal_swap"] for r in records]))}
            if "minimal_swap" in records[0]
            else {}
        ),
        "mean_distance_top1": float(np.mean(distances)) if distances else None,
        "diversity_at_k": float(np.mean(diversities)) if diversities else None,
    }
    if latencies:
        out["latency_ms_p50"] = float(np.percentile(latencies, 50) * 1000)
        out["latency_ms_p95"] = float(np.percentile(latencies, 95) * 1000)
    return out


def _diversity(engine: Engine, items: list[ResultItem], kind: str) -> float | None:
    if len(items) < 2:
        return None
    ids = [i.id for i in items]
    vecs = engine.index.images.vectors(ids) if kind == "image" else engine.index.captions.vectors(ids)
    sims = vecs @ vecs.T
    upper = sims[np.triu_indices(len(ids), 1)]
    return float(np.mean(1.0 - upper))


def evaluate_counterfactuals(
    engine: Engine,
    labels_file: str | Path,
    n_queries: int = 200,
    seed: int = 0,
    k: int = 5,
    sides: tuple[str, ...] = ("image", "text"),
    progress: Callable[[int, int], None] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Run the shapes-world counterfactual evaluation.

    Args:
        engine: an engine over an index built from a shapes folder.
        labels_file: that folder's ``labels.jsonl``.
        n_queries: queries per side.
        seed: query sampling seed.
        k: results per query.
        sides: which sides to evaluate.
        **overrides: `EngineOptions` fields for every query (e.g. ``match_margin=0.1``).

    Returns:
        JSON-friendly dict: per side, per method (ours and each baseline) the rates, distances,
        diversity and latency; plus how many queries were drawn and skipped.
    """
    indexed, by_attrs = _indexed_images(engine, labels_file)
    id_attrs = {image_id: attrs for image_id, attrs, _ in indexed}
    rng = np.random.default_rng(seed)
    report: dict[str, Any] = {
        "index_images": len(id_attrs),
        "k": k,
        "seed": seed,
        "options": {**dataclasses.asdict(engine.options), **overrides},
        "definitions": dict(DEFINITIONS),
    }
    if "image" in sides:
        report["image_side"] = _image_side(
            engine, indexed, by_attrs, id_attrs, n_queries, rng, k, progress, overrides
        )
    if "text" in sides:
        report["text_side"] = _text_side(engine, indexed, n_queries, rng, k, progress, overrides)
    # own generators: the figures above stay the same draws whether or not these run
    if "verdicts" in sides:
        report["verdicts"] = _verdicts(
            engine, indexed, n_queries, np.random.default_rng([seed, 1]), k, overrides
        )
    if "diversity" in sides:
        report["decrease_diversity"] = _decrease_diversity(
            engine, indexed, id_attrs, n_queries, np.random.default_rng([seed, 2]), overrides
        )
    return report


def _indexed_images(
    engine: Engine, labels_file: str | Path
) -> tuple[list[tuple[int, ShapeAttrs, dict]], dict[ShapeAttrs, list[int]]]:
    """The labelled images the index holds, as ``(id, attributes, label record)``, and the ids by attributes."""
    records = read_labels(labels_file)
    root = Path(labels_file).parent if Path(labels_file).is_file() else Path(labels_file)
    by_attrs: dict[ShapeAttrs, list[int]] = {}
    indexed: list[tuple[int, ShapeAttrs, dict]] = []
    for record in records:
        image_id = engine.index.image_id_for_path((root / record["file"]).resolve())
        if image_id is None:
            continue
        attrs = attrs_of(record)
        by_attrs.setdefault(attrs, []).append(image_id)
        indexed.append((image_id, attrs, record))
    if not indexed:
        raise ValueError(
            f"none of the images in {labels_file} are in this index (built from {engine.index.root})"
        )
    return indexed, by_attrs


def _named_values(attrs: ShapeAttrs, named: tuple[str, ...]) -> dict[str, str]:
    return {a: getattr(attrs, a) for a in named}


def _verdicts(engine, indexed, n_queries, rng, k, overrides) -> dict[str, Any]:
    """Absent and present combinations: does "verified" mean what it says?

    Each query changes one attribute of an indexed image and names a random subset of the attributes (as
    `_image_side` does); it is *absent* when no other indexed image has every value the text names.
    """
    present_rows, absent_rows = [], []
    combos = [attrs for _, attrs, _ in indexed]
    attempts = 0
    while min(len(present_rows), len(absent_rows)) < n_queries and attempts < n_queries * 50:
        attempts += 1
        image_id, attrs, _ = indexed[int(rng.integers(len(indexed)))]
        attribute = CHANGEABLE[int(rng.integers(len(CHANGEABLE)))]
        choices = [v for v in VALUES[attribute] if v != getattr(attrs, attribute)]
        wanted = attrs.replace(**{attribute: choices[int(rng.integers(len(choices)))]})
        others = [a for a in ("colour", "shape") if a != attribute]
        named = tuple(a for a in FULL if a == attribute or a in others or rng.random() < 0.3)
        values = _named_values(wanted, named)
        holders = sum(all(getattr(c, a) == v for a, v in values.items()) for c in combos)
        rows = present_rows if holders else absent_rows
        if len(rows) >= n_queries:
            continue
        result = engine.counterfactuals(
            image=image_id, text=caption(wanted, named), mode="increase", k=k, **overrides
        )
        by_id = {i: a for i, a, _ in indexed}
        top = result.items[0] if result.items else None
        right = top is not None and all(getattr(by_id[top.id], a) == v for a, v in values.items())
        rows.append(
            {
                "any_verified": any(item.verdict == "verified" for item in result.items),
                "top_verified_right": bool(top is not None and top.verdict == "verified" and right),
                "warned": any("nothing that matches" in w for w in result.warnings),
            }
        )
    return {
        "absent_queries": len(absent_rows),
        "absent_verified_rate": float(np.mean([r["any_verified"] for r in absent_rows]))
        if absent_rows
        else None,
        "absent_warned_rate": float(np.mean([r["warned"] for r in absent_rows])) if absent_rows else None,
        "present_queries": len(present_rows),
        "present_verified_right_rate": (
            float(np.mean([r["top_verified_right"] for r in present_rows])) if present_rows else None
        ),
        "present_warned_rate": float(np.mean([r["warned"] for r in present_rows])) if present_rows else None,
    }


def _decrease_diversity(engine, indexed, id_attrs, n_queries, rng, overrides) -> dict[str, Any]:
    """Decrease on the image's full caption, top 4: how many different attributes do the answers change,
    and is each still a one-attribute change?"""
    distinct, one_attribute, answered = [], [], 0
    for _ in range(n_queries):
        image_id, attrs, _ = indexed[int(rng.integers(len(indexed)))]
        result = engine.counterfactuals(
            image=image_id, text=caption(attrs, FULL), mode="decrease", k=4, **overrides
        )
        changed = []
        for item in result.items[:4]:
            other = id_attrs.get(item.id)
            if other is None:
                continue
            diff = [a for a in (*CHANGEABLE, "background") if getattr(other, a) != getattr(attrs, a)]
            one_attribute.append(len(diff) == 1)
            changed.extend(diff if len(diff) == 1 else [])
        answered += bool(result.items)
        distinct.append(len(set(changed)))
    return {
        "queries": n_queries,
        "answered_rate": answered / n_queries if n_queries else None,
        "distinct_changes_at_4": float(np.mean(distinct)) if distinct else None,
        "one_attribute_rate": float(np.mean(one_attribute)) if one_attribute else None,
    }


def _image_side(
    engine, indexed, by_attrs, id_attrs, n_queries, rng, k, progress, overrides
) -> dict[str, Any]:
    per_method: dict[str, list[dict[str, Any]]] = {}
    drawn = skipped = 0
    attempts = 0
    while drawn < n_queries and attempts < n_queries * 20:
        attempts += 1
        image_id, attrs, _ = indexed[int(rng.integers(len(indexed)))]
        attribute = CHANGEABLE[int(rng.integers(len(CHANGEABLE)))]
        choices = [v for v in VALUES[attribute] if v != getattr(attrs, attribute)]
        wanted = attrs.replace(**{attribute: choices[int(rng.integers(len(choices)))]})
        if not [i for i in by_attrs.get(wanted, []) if i != image_id]:
            skipped += 1
            continue
        if rng.random() < 0.5:
            named = FULL
        else:
            others = [a for a in FULL if a != attribute]
            extra = list(rng.choice(others, size=int(rng.integers(1, 3)), replace=False))
            named = tuple(a for a in FULL if a == attribute or a in extra)
        text = caption(wanted, named)
        result = engine.counterfactuals(image=image_id, text=text, mode="increase", k=k, **overrides)
        drawn += 1
        for method, items, latency in _methods(result):
            top = id_attrs.get(items[0].id) if items else None
            per_method.setdefault(method, []).append(
                _record(engine, method, items, latency, "image")
                | {
                    "hit": bool(top is not None and getattr(top, attribute) == getattr(wanted, attribute)),
                    "minimal": bool(top is not None and top == wanted),
                }
            )
        if progress:
            progress(drawn, n_queries)
    out = {"drawn": drawn, "skipped_no_minimal_answer": skipped}
    out.update({method: _summarise(rows) for method, rows in per_method.items()})
    return out


def _text_side(engine, indexed, n_queries, rng, k, progress, overrides) -> dict[str, Any]:
    caption_ids = engine.index.captions.ids
    if len(caption_ids) == 0:
        return {"drawn": 0, "error": "the index holds no captions"}
    parsed = {m["id"]: parse_caption(m["text"]) for m in engine.index.captions.meta(caption_ids)}
    by_keys: dict[tuple[str, ...], list[dict[str, str]]] = {}
    for p in parsed.values():
        by_keys.setdefault(tuple(p), []).append(p)
    per_method: dict[str, list[dict[str, Any]]] = {}
    drawn = skipped = attempts = 0
    while drawn < n_queries and attempts < n_queries * 20:
        attempts += 1
        image_id, attrs, record = indexed[int(rng.integers(len(indexed)))]
        own = record["caption"]
        own_parsed = parse_caption(own)
        if not any(_one_attribute_apart(own_parsed, p) for p in by_keys.get(tuple(own_parsed), [])):
            skipped += 1
            continue
        result = engine.counterfactuals(
            image=image_id, text=own, side="text", mode="decrease", k=k, **overrides
        )
        drawn += 1
        for method, items, latency in _methods(result):
            top = parsed.get(items[0].id) if items else None
            hit = top is not None and _wrong_about(top, attrs)
            per_method.setdefault(method, []).append(
                _record(engine, method, items, latency, "caption")
                | {
                    "hit": hit,
                    "minimal": hit and _one_attribute_differs(own_parsed, top),
                    "minimal_swap": hit and _one_attribute_apart(own_parsed, top),
                }
            )
        if progress:
            progress(drawn, n_queries)
    out = {"drawn": drawn, "skipped_no_minimal_answer": skipped}
    out.update({method: _summarise(rows) for method, rows in per_method.items()})
    return out


def _record(
    engine: Engine, method: str, items: list[ResultItem], latency: float | None, kind: str
) -> dict[str, Any]:
    """The per-query fields every method shares (the side-specific judgements are added by the caller)."""
    return {
        "returned": len(items),
        "verified": sum(i.verified for i in items),
        "distance": items[0].distance if items else None,
        "diversity": _diversity(engine, items, kind) if method == OURS else None,
        "latency": latency,
    }


def _methods(result: CounterfactualResult):
    """(name, items, latency) for ours and each baseline; latency excludes the baselines' own time."""
    ours_latency = result.timings.get("total", 0.0) - result.timings.get("baselines", 0.0)
    yield OURS, result.items, ours_latency
    for name, items in result.baselines.items():
        yield name, items, None
