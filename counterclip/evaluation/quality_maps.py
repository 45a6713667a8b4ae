"""The quality card of attribution maps aggregated over rendered shapes images, each method beside a
random map (a fresh random map for every call: the baseline of an explainer that ignores its input).

Every image is explained for the probability of its true ``"a {colour} {shape}"`` caption among the 30
colour-shape captions (as ``eval explainers`` does); contrastivity against the most likely other label.
Truth: the object's box. Each map's *mass on the object* (the share of its absolute mass in the cells
the box touches) is what the world says a map should show; agreement is Spearman's rank correlation of
each number with it over every map of every method.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from counterclip.explainers import LabelProbability
from counterclip.explainers._core.common import image_grid, pool_to_grid
from counterclip.explainers.base import Explanation
from counterclip.explainers.quality import MapQualitySettings, map_quality
from counterclip.models.base import ClipModel
from counterclip.quality import QUALITIES, aggregate, rank_correlation
from counterclip.shapes import COLOURS, SHAPES, render, sample_attrs

RANDOM_MAP = "random"


def random_explainer(rng: np.random.Generator) -> Callable[[Image.Image, Any], Explanation]:
    """An "explainer" that returns a fresh uniform random map at the image's size on every call."""

    def explain_randomly(image: Image.Image, target: Any) -> Explanation:
        return Explanation(
            method=RANDOM_MAP, modality="image", score=0.0, pixel_map=rng.random((image.height, image.width))
        )

    return explain_randomly


def evaluate_map_quality(
    model: ClipModel,
    n: int = 20,
    seed: int = 0,
    methods: Sequence[str] = ("relevance",),
    image_size: int = 128,
    settings: MapQualitySettings | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Map cards over ``n`` rendered shapes images, per method and for a random map.

    Returns:
        JSON-friendly dict: per method the aggregated card and the mean mass on the object; the agreement of
        each number with the mass on the object.
    """
    rng = np.random.default_rng(seed)
    labels = [f"a {colour} {shape}" for shape in SHAPES for colour in COLOURS]
    samples = []
    for _ in range(n):
        attrs = sample_attrs(rng)
        image, box = render(attrs, rng, image_size)
        samples.append((image, box, labels.index(f"a {attrs.colour} {attrs.shape}")))
    grid = image_grid(model)
    explainers: dict[str, dict[str, Any]] = {m: {"method": m} for m in methods}
    explainers[RANDOM_MAP] = {"explain_with": random_explainer(np.random.default_rng([seed, 7]))}
    rows: list[dict[str, Any]] = []
    total = n * len(explainers)
    for done, (name, how, (image, box, index)) in enumerate(
        ((name, how, sample) for name, how in explainers.items() for sample in samples), start=1
    ):
        target = LabelProbability(index, model.pair_score)
        card, cells = _card_and_cells(model, image, labels, target, how, settings, grid)
        rows.append({"method": name, "card": card, "on_object": mass_on_object(cells, box, image.size)})
        if progress is not None:
            progress(done, total)
    return _maps_report(rows, list(explainers), n, seed, image_size)


def _card_and_cells(model, image, labels, target, how, settings, grid):
    """The card of one map and the map pooled to the grid."""
    from counterclip.explainers import explain

    if "explain_with" in how:
        exp = how["explain_with"](image, target)
    else:
        exp = explain(model, image, labels, method=how["method"], target=target)
    card = map_quality(model, image, labels, explanation=exp, target=target, settings=settings, **how)
    return card, pool_to_grid(np.asarray(exp.pixel_map, dtype=np.float64), grid)


def mass_on_object(cells: np.ndarray, box: Sequence[int], size: tuple[int, int]) -> float:
    """The share of a map's absolute mass in the grid cells the object's box ``(x0, y0, x1, y1)`` touches."""
    width, height = size
    gh, gw = cells.shape
    x0, y0, x1, y1 = box
    rows = [r for r in range(gh) if r * height / gh < y1 and y0 < (r + 1) * height / gh]
    cols = [c for c in range(gw) if c * width / gw < x1 and x0 < (c + 1) * width / gw]
    mass = np.abs(cells)
    total = mass.sum()
    return float(mass[np.ix_(rows, cols)].sum() / total) if total > 0 else 0.0


def _maps_report(
    rows: list[dict[str, Any]], names: list[str], n: int, seed: int, size: int
) -> dict[str, Any]:
    methods = {}
    for name in names:
        mine = [r for r in rows if r["method"] == name]
        card = aggregate([r["card"] for r in mine], f"{name}: {len(mine)} maps")
        methods[name] = {
            "card": card.to_dict(),
            "mass_on_object": float(np.mean([r["on_object"] for r in mine])),
        }
    agreement: dict[str, float | None] = {}
    for quality in QUALITIES:
        pairs = [(r["card"].measures()[quality].value, r["on_object"]) for r in rows]
        pairs = [(v, t) for v, t in pairs if v is not None]
        value = rank_correlation(*map(np.asarray, zip(*pairs, strict=True))) if len(pairs) > 2 else None
        agreement[quality] = value
    return {
        "images": n,
        "seed": seed,
        "image_size": size,
        "target": "probability of the true 'a {colour} {shape}' caption among 30 colour-shape captions",
        "truth": "mass on the object: the share of a map's absolute mass in the cells the object's box touches; "
        "agreement: Spearman of each number with it over every map (completeness of integrated gradients "
        "is an error: lower is better)",
        "methods": methods,
        "agreement": agreement,
    }
