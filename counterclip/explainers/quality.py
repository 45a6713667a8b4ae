"""The quality card of an image attribution map: its five qualities, each beside a reference.

- faithfulness: insertion AUC minus deletion AUC of the explained score, the map's cells taken most
  relevant first, against the same for random cell orders (scores normalised to the unchanged image, 1,
  and the image with every cell removed, 0; a random order sits near 0);
- understandability: concentration, the share of the map's absolute mass its top 10% of cells hold,
  against a flat map's (0.1);
- completeness: integrated gradients' completeness error ``|sum of attributions - (f(x) - f(baseline))|
  / |f(x) - f(baseline)|`` (0 = complete; an empty map's is 1); other methods: the score the top 25% of
  cells keep alone (inserted into the removed image), against random cells;
- stability: the rank correlation of the map's cells with the map of the image under small pixel noise
  (max-sensitivity in the details), against a random map's (0);
- contrastivity: how different the map for "why A" is from the map for "why B" (`map_distance`: 0 = the
  same map), against how different the map is from itself under the noise above.

Plain inputs only (a model, an image, texts, targets), so the explainers stay free of the engine.

Examples::

    card = map_quality(model, image, labels, method="relevance", target=LabelProbability(0, model.pair_score))
    print("\\n".join(card.lines()))
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from counterclip.explainers._core.common import PixelCodec, image_grid, model_guard, pool_to_grid
from counterclip.explainers._core.targets import LabelProbability, Target
from counterclip.explainers.base import Explanation
from counterclip.explainers.metrics import auc, cell_masks, relative_change
from counterclip.models.base import ClipModel
from counterclip.quality import (
    Measure,
    QualityCard,
    completeness_error,
    concentration,
    map_distance,
    not_measured,
    rank_correlation,
)

Explainer = Callable[[Image.Image, Target], Explanation]  # (image, target) -> a map of that target

DEFINITIONS: dict[str, str] = {
    "faithfulness": "insertion AUC minus deletion AUC of the explained score, cells most relevant first "
    "(scores normalised: unchanged image 1, every cell removed 0)",
    "understandability": "share of the map's absolute mass its top {top:.0%} of cells hold",
    "completeness:ig": "integrated gradients' completeness error |sum of attributions - (f(x) - "
    "f(baseline))| / |f(x) - f(baseline)| (0 = the attributions add up to the whole change)",
    "completeness": "normalised score the top {kept:.0%} of cells keep alone (inserted into the removed image)",
    "stability": "rank correlation of the map's cells with the map of the image under pixel noise of at most "
    "{noise:g} ({copies} copies)",
    "contrastivity": "how different the map for 'why A' is from the map for 'why B' (half the L1 distance "
    "of the maps scaled to unit mass: 0 = the same map, 1 = other places or opposite signs)",
}


@dataclass(frozen=True)
class MapQualitySettings:
    """How hard a map is tested (defaults: ~60 scored images and 3 extra explanations)."""

    points: int = 8  # curve points after the start (deletion, insertion)
    random_orders: int = 2  # random cell orders averaged for the references
    top_share: float = 0.1  # understandability: the top regions, as a share of the cells
    kept_share: float = 0.25  # completeness (not IG): the top cells kept alone
    noise_copies: int = 2  # stability: noisy copies of the image explained again
    noise: float = 0.02  # max absolute uniform pixel noise, [0, 1] units
    seed: int = 0  # random orders and noise


def map_quality(
    model: ClipModel,
    image: Image.Image,
    texts: str | Sequence[str],
    explanation: Explanation | None = None,
    method: str = "relevance",
    target: Target | None = None,
    foil: Target | None = None,
    settings: MapQualitySettings | None = None,
    explain_with: Explainer | None = None,
    **options: Any,
) -> QualityCard:
    """The quality card of one image map.

    Args:
        model: the CLIP model explained.
        image: the explained image.
        texts: the caption, or the label set, the targets read.
        explanation: the map (default: computed with ``method`` and ``options``).
        method: the explainer (also used again for the noisy copies and the foil's map).
        target: the explained score (default as `counterclip.explainers.explain`).
        foil: the score of "why B" for contrastivity (default: with several texts, the probability of the
            most likely label other than the explained one; with one text, none: not measured).
        settings: `MapQualitySettings`.
        explain_with: ``(image, target) -> Explanation`` instead of ``method`` (e.g. a baseline).
        **options: the method's options.

    Returns:
        `QualityCard` (``forward_passes``: the model passes the card cost beyond the map itself).
    """
    from counterclip.explainers import default_target, explain

    started, settings = time.perf_counter(), settings or MapQualitySettings()
    texts = [texts] if isinstance(texts, str) else list(texts)
    target = target or default_target(model, texts)
    again = explain_with or (lambda im, tg: explain(model, im, texts, method=method, target=tg, **options))
    exp = explanation if explanation is not None else again(image, target)
    if exp.pixel_map is None:
        raise ValueError("map_quality measures image maps; this explanation has none")
    cells = pool_to_grid(np.asarray(exp.pixel_map, dtype=np.float64), image_grid(model))
    scorer = _Scorer(model, image, texts, target)
    curves = _curves(scorer, cells, settings)
    noisy = [again(copy, target) for copy in _noisy_copies(image, settings)]
    noisy_cells = [pool_to_grid(np.asarray(e.pixel_map, dtype=np.float64), cells.shape) for e in noisy]
    foil = foil or _runner_up(scorer, target, len(texts))
    contrast = again(image, foil) if foil is not None else None
    passes = (
        scorer.passes + sum(e.forward_passes for e in noisy) + (contrast.forward_passes if contrast else 0)
    )
    return QualityCard(
        subject=f"map ({exp.method}): {exp.explains or target.describe(texts)}",
        faithfulness=_faithfulness(curves),
        understandability=_understandability(cells, settings),
        completeness=_completeness(exp, curves, settings),
        stability=_stability(cells, noisy_cells, settings),
        contrastivity=_contrastivity(cells, contrast, noisy_cells, foil, texts),
        forward_passes=passes,
        seconds=time.perf_counter() - started,
    )


class _Scorer:
    """The explained score of [0, 1] pixel batches, counting the images it scores."""

    def __init__(self, model: ClipModel, image: Image.Image, texts: list[str], target: Target) -> None:
        self.model, self.target, self.codec = model, target, PixelCodec.of(model)
        self.pixels = self.codec.pil_to_pixels(image).to(model.device)
        with torch.no_grad():
            self.text_emb = model.text_features(model.tokenize(texts).to(model.device))
        self.passes = 0

    def __call__(self, batch: torch.Tensor, target: Target | None = None) -> np.ndarray:
        chosen = target or self.target
        self.passes += len(batch)
        with model_guard(self.model), torch.no_grad():
            scores = [
                chosen(self.model.image_features(self.codec.to_model(batch[i : i + 32])), self.text_emb)
                for i in range(0, len(batch), 32)
            ]
        return torch.cat(scores).double().cpu().numpy()


def _curves(scorer: _Scorer, cells: np.ndarray, settings: MapQualitySettings) -> dict[str, Any]:
    """Normalised deletion and insertion curves, the map's order first, then the random orders."""
    pixels = scorer.pixels
    fill = pixels.mean(dim=(2, 3), keepdim=True).expand_as(pixels)
    rng = np.random.default_rng(settings.seed)
    orders = [np.argsort(-cells.reshape(-1), kind="stable")]
    orders += [rng.permutation(cells.size) for _ in range(settings.random_orders)]
    counts = np.unique(np.linspace(0, cells.size, settings.points + 1).round().astype(int))
    masks = cell_masks(tuple(pixels.shape[-2:]), cells.shape).to(pixels.device)
    batch = []
    for order in orders:
        for count in counts:
            changed = masks[list(order[:count])].any(dim=0) if count else torch.zeros_like(masks[0])
            changed = changed.view(1, 1, *changed.shape)
            batch += [torch.where(changed, fill, pixels), torch.where(changed, pixels, fill)]
    scores = scorer(torch.cat(batch)).reshape(len(orders), len(counts), 2)
    start, end = float(scores[0, 0, 0]), float(scores[0, -1, 0])
    span = start - end if abs(start - end) > 1e-12 else 1e-12
    grid = np.linspace(0, cells.size, settings.points + 1)
    deletion = np.stack([(np.interp(grid, counts, row[:, 0]) - end) / span for row in scores])
    insertion = np.stack([(np.interp(grid, counts, row[:, 1]) - end) / span for row in scores])
    checkable = start - end > 5e-3 * max(abs(start), abs(end), 1e-6)
    return {"deletion": deletion, "insertion": insertion, "start": start, "end": end, "checkable": checkable}


def _faithfulness(curves: dict[str, Any]) -> Measure:
    definition = DEFINITIONS["faithfulness"]
    if not curves["checkable"]:
        why = f"greying out the whole image does not lower this score ({curves['start']:.3g} to {curves['end']:.3g})"
        return not_measured(definition, f"not measurable: {why}")
    deletion = [auc(c) for c in curves["deletion"]]
    insertion = [auc(c) for c in curves["insertion"]]
    value = insertion[0] - deletion[0]
    reference = float(np.mean(np.subtract(insertion[1:], deletion[1:])))
    sentence = (
        f"removing its top cells first leaves {deletion[0]:.2f} of the score on average, putting them back "
        f"first restores {insertion[0]:.2f} (random orders: {np.mean(deletion[1:]):.2f}, {np.mean(insertion[1:]):.2f})"
    )
    details = {
        "deletion_auc": deletion[0],
        "insertion_auc": insertion[0],
        "deletion_auc_random": float(np.mean(deletion[1:])),
        "insertion_auc_random": float(np.mean(insertion[1:])),
    }
    return Measure(value, definition, True, reference, "random orders", sentence, details)


def _understandability(cells: np.ndarray, settings: MapQualitySettings) -> Measure:
    share = concentration(cells, settings.top_share)
    sentence = f"its top {settings.top_share:.0%} of regions hold {share:.0%} of its mass"
    definition = DEFINITIONS["understandability"].format(top=settings.top_share)
    return Measure(share, definition, True, float(settings.top_share), "flat map", sentence)


def _completeness(exp: Explanation, curves: dict[str, Any], settings: MapQualitySettings) -> Measure:
    extras = exp.extras
    if "attribution_sum" in extras and "baseline_score" in extras:
        error = completeness_error(extras["attribution_sum"], exp.score, extras["baseline_score"])
        if error is None:
            return not_measured(
                DEFINITIONS["completeness:ig"], "not measurable: the score does not move", False
            )
        sentence = f"its attributions add up to {1 - error:.0%} of the score's change from the baseline"
        return Measure(error, DEFINITIONS["completeness:ig"], False, 1.0, "empty map", sentence)
    definition = DEFINITIONS["completeness"].format(kept=settings.kept_share)
    if not curves["checkable"]:
        return not_measured(definition, "not measurable: removing the image does not lower the score")
    at = settings.kept_share * settings.points
    insertion = curves["insertion"]
    kept = [float(np.interp(at, np.arange(insertion.shape[1]), row)) for row in insertion]
    sentence = f"its top {settings.kept_share:.0%} of cells alone keep {kept[0]:.0%} of the score"
    return Measure(kept[0], definition, True, float(np.mean(kept[1:])), "random cells", sentence)


def _stability(cells: np.ndarray, noisy: list[np.ndarray], settings: MapQualitySettings) -> Measure:
    definition = DEFINITIONS["stability"].format(noise=settings.noise, copies=settings.noise_copies)
    if not noisy:
        return not_measured(definition, "not measured: no noisy copies asked")
    correlations = [rank_correlation(cells, other) for other in noisy]
    sensitivity = max(relative_change(cells, other) for other in noisy)
    value = float(np.mean(correlations))
    sentence = f"under a little pixel noise its regions keep their order (rank correlation {value:.2f})"
    details = {"max_sensitivity": sensitivity, "rank_correlations": correlations}
    return Measure(value, definition, True, 0.0, "random map", sentence, details)


def _contrastivity(
    cells: np.ndarray,
    contrast: Explanation | None,
    noisy: list[np.ndarray],
    foil: Target | None,
    texts: list[str],
) -> Measure:
    definition = DEFINITIONS["contrastivity"]
    if contrast is None or contrast.pixel_map is None or foil is None:
        return not_measured(definition, "not measured: no second target ('why B') to contrast with")
    other = pool_to_grid(np.asarray(contrast.pixel_map, dtype=np.float64), cells.shape)
    value = map_distance(cells, other)
    floor = float(np.mean([map_distance(cells, n) for n in noisy])) if noisy else 0.0
    sentence = f"the map for {foil.describe(texts)} differs from it by {value:.2f} (0 = the same map)"
    return Measure(value, definition, True, floor, "noise floor", sentence, {"foil": foil.describe(texts)})


def _noisy_copies(image: Image.Image, settings: MapQualitySettings) -> list[Image.Image]:
    """Copies of the image with uniform pixel noise of at most ``settings.noise`` (seeded)."""
    rng = np.random.default_rng([settings.seed, 1])
    array = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    copies = []
    for _ in range(settings.noise_copies):
        noisy = np.clip(array + rng.uniform(-settings.noise, settings.noise, array.shape), 0, 1)
        copies.append(Image.fromarray((noisy * 255).round().astype(np.uint8)))
    return copies


def _runner_up(scorer: _Scorer, target: Target, labels: int) -> Target | None:
    """With a label set and a label's probability explained: the most likely other label's probability."""
    if labels < 2 or not isinstance(target, LabelProbability):
        return None
    with torch.no_grad():
        probabilities = scorer.model.pair_score.label_probabilities(
            scorer.model.image_features(scorer.codec.to_model(scorer.pixels)), scorer.text_emb
        )[0]
    scorer.passes += 1
    order = [int(i) for i in torch.argsort(probabilities, descending=True) if int(i) != target.index]
    return LabelProbability(order[0], target.score)


class PairWith:
    """The pair score of the image with one fixed embedding (ignores the texts): "why B" for an image or
    a text that is not among the explained texts."""

    def __init__(self, embedding: torch.Tensor, score: Any, name: str = "the other") -> None:
        self.embedding, self.score, self.name = embedding, score, name

    def __call__(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        return self.score.pairs(image_emb, self.embedding.to(image_emb.device, image_emb.dtype)[None])

    def describe(self, texts: list[str]) -> str:
        return f"similarity to {self.name}"


__all__ = ["DEFINITIONS", "MapQualitySettings", "PairWith", "map_quality"]
