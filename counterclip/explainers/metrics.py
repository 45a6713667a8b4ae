"""Explanation-quality metrics: pointing game, deletion / insertion curves and AUC, max-sensitivity, and
the per-map faithfulness figure reports attach to each map (`deletion_faithfulness`, `map_faithfulness`).

All functions are plain numpy/torch over maps and a black-box score function, so they apply to any
explainer (including the classical ones).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from PIL import Image

    from counterclip.explainers._core.targets import Target
    from counterclip.models.base import ClipModel


def pointing_hit(pixel_map: np.ndarray, bbox: tuple[int, int, int, int] | list[int]) -> bool:
    """Whether the map's maximum lies in the box.

    Args:
        pixel_map: ``(H, W)`` map at the image's resolution.
        bbox: ``(x0, y0, x1, y1)`` in pixels, ``x1``/``y1`` exclusive.

    Returns:
        True if the (first) argmax is inside the box. A constant map never hits (no maximum to point at).
    """
    values = np.asarray(pixel_map)
    if values.size == 0 or np.all(values == values.flat[0]):
        return False
    y, x = np.unravel_index(int(np.argmax(values)), values.shape)
    x0, y0, x1, y1 = bbox
    return bool(x0 <= x < x1 and y0 <= y < y1)


def pointing_hit_cells(
    cell_map: np.ndarray, bbox: tuple[int, int, int, int] | list[int], image_size: tuple[int, int]
) -> bool:
    """Pointing game at the map's own resolution: whether the most relevant cell overlaps the box.

    A patch-level map says nothing about where inside its top cell the evidence is, so the pixel argmax
    of an upsampled map lands on an interpolation artefact (the cell centre); this asks instead whether
    the top cell touches the object (in the spirit of the original pointing game's 15-pixel tolerance).

    Args:
        cell_map: ``(gh, gw)`` map over a regular grid covering the image.
        bbox: ``(x0, y0, x1, y1)`` in pixels, ``x1``/``y1`` exclusive.
        image_size: ``(H, W)`` of the image the box refers to.

    Returns:
        True if the (first) top cell's pixel rectangle intersects the box; a constant map never hits.
    """
    values = np.asarray(cell_map)
    if values.size == 0 or np.all(values == values.flat[0]):
        return False
    row, col = np.unravel_index(int(np.argmax(values)), values.shape)
    gh, gw = values.shape
    h, w = image_size
    cy0, cy1 = row * h / gh, (row + 1) * h / gh
    cx0, cx1 = col * w / gw, (col + 1) * w / gw
    x0, y0, x1, y1 = bbox
    return bool(cx0 < x1 and x0 < cx1 and cy0 < y1 and y0 < cy1)


def cell_masks(size: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """``(gh * gw, H, W)`` boolean masks of a regular grid of cells (row-major)."""
    h, w = size
    rows = torch.clamp(torch.arange(h) * grid[0] // h, max=grid[0] - 1)
    cols = torch.clamp(torch.arange(w) * grid[1] // w, max=grid[1] - 1)
    cell = rows[:, None] * grid[1] + cols[None, :]
    return torch.stack([cell == i for i in range(grid[0] * grid[1])])


def perturbation_curve(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    pixels: torch.Tensor,
    order: np.ndarray,
    grid: tuple[int, int],
    mode: str,
    fill: torch.Tensor,
    points: int = 16,
) -> np.ndarray:
    """Scores while cells are removed (``deletion``) or added (``insertion``) in ``order``.

    Args:
        score_fn: ``(n, 3, H, W)`` [0, 1] pixels -> ``(n,)`` scores.
        pixels: ``(1, 3, H, W)`` [0, 1] image.
        order: cell indices, most relevant first.
        grid: the cell grid ``(gh, gw)``.
        mode: ``deletion`` (start from the image, replace cells by ``fill``) or ``insertion`` (start from
            ``fill``, put cells back).
        fill: ``(1, 3, H, W)`` the "removed" image (e.g. the image's mean colour).
        points: curve points after the start (cells are changed in ``len(order) / points`` chunks).

    Returns:
        ``(points + 1,)`` scores, from no change to all cells changed.
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be deletion or insertion, got {mode!r}")
    masks = cell_masks(tuple(pixels.shape[-2:]), grid).to(pixels.device)
    counts = np.unique(np.linspace(0, len(order), points + 1).round().astype(int))
    batch = []
    for count in counts:
        changed = masks[list(order[:count])].any(dim=0) if count else torch.zeros_like(masks[0])
        changed = changed.view(1, 1, *changed.shape)
        if mode == "deletion":
            batch.append(torch.where(changed, fill, pixels))
        else:
            batch.append(torch.where(changed, pixels, fill))
    with torch.no_grad():
        scores = score_fn(torch.cat(batch)).double().cpu().numpy()
    return np.interp(np.linspace(0, len(order), points + 1), counts, scores)


def auc(curve: np.ndarray) -> float:
    """Area under a curve sampled at evenly spaced points on [0, 1] (trapezoid rule)."""
    values = np.asarray(curve, dtype=np.float64)
    return float(((values[1:] + values[:-1]) / 2).mean()) if len(values) > 1 else float(values[0])


def relative_change(reference: np.ndarray, other: np.ndarray) -> float:
    """``||other - reference|| / ||reference||`` (0 when both are zero)."""
    ref = np.asarray(reference, dtype=np.float64)
    norm = np.linalg.norm(ref)
    diff = np.linalg.norm(np.asarray(other, dtype=np.float64) - ref)
    return float(diff / norm) if norm > 0 else float(diff > 0)


#: A map whose deletion AUC is at most this share of a random order's is called better than random.
BETTER_THAN_RANDOM = 0.8


@dataclass(frozen=True)
class Faithfulness:
    """How well one map ranks the regions of one image: its deletion curve beside random orders.

    Scores along each curve are normalised to the unchanged image (1) and the image with every cell
    removed (0), so the AUCs of different images and scores compare: lower is better, a random order
    sits near 0.5.

    Attributes:
        deletion_auc: normalised area under the deletion curve in the map's order (most relevant first).
        random_auc: the same for random cell orders (mean).
        start / end: the explained score of the unchanged image and of the image with every cell removed.
        cells: cells removed (the model's patch grid).
    """

    deletion_auc: float
    random_auc: float
    start: float
    end: float
    cells: int

    @property
    def checkable(self) -> bool:
        """Whether deletion can rank regions here: greying out the whole image must lower the score,
        by at least 0.5% of its size."""
        return self.start - self.end > 5e-3 * max(abs(self.start), abs(self.end), 1e-6)

    @property
    def ratio(self) -> float | None:
        """``deletion_auc / random_auc`` (below 1: better than random); None when not measurable."""
        if not self.checkable or self.random_auc <= 0.05:
            return None
        return self.deletion_auc / self.random_auc

    @property
    def verdict(self) -> str:
        """``better than random`` | ``barely better than random`` | ``no better than random`` |
        ``not measurable``."""
        ratio = self.ratio
        if ratio is None:
            return "not measurable"
        if ratio <= BETTER_THAN_RANDOM:
            return "better than random"
        return "barely better than random" if ratio < 1.0 else "no better than random"

    def describe(self) -> str:
        """One line for a person, with the figures."""
        if not self.checkable:
            moved = "raises" if self.end > self.start else "barely moves"
            return (
                f"faithfulness not measurable: greying out the whole image {moved} this score "
                f"({self.start:.3g} to {self.end:.3g}), so deleting regions cannot rank them"
            )
        if self.ratio is None:
            return (
                f"faithfulness not measurable: deleting random regions does not lower this score "
                f"(deletion AUC {self.deletion_auc:.2f}, random {self.random_auc:.2f})"
            )
        advice = "" if self.verdict == "better than random" else ": do not rely on this map for this image"
        return (
            f"faithfulness {self.verdict}: deleting its top regions first gives deletion AUC "
            f"{self.deletion_auc:.2f} vs {self.random_auc:.2f} for a random order (lower is better){advice}"
        )

    def to_dict(self) -> dict[str, float | int | str | None]:
        """JSON-ready figures and the verdict."""
        return {
            "deletion_auc": self.deletion_auc,
            "random_auc": self.random_auc,
            "ratio": self.ratio,
            "start": self.start,
            "end": self.end,
            "cells": self.cells,
            "verdict": self.verdict,
        }


def deletion_faithfulness(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    pixels: torch.Tensor,
    cell_map: np.ndarray,
    fill: torch.Tensor | None = None,
    points: int = 8,
    random_orders: int = 2,
    seed: int = 0,
) -> Faithfulness:
    """The per-map faithfulness figure: deletion AUC in the map's order vs random orders, one image.

    Cheap enough to attach to every map of a report: ``points + 1`` images per curve, all curves scored
    in one batch (``(random_orders + 1) * (points + 1)`` forward passes, no gradients).

    Args:
        score_fn: ``(n, 3, H, W)`` [0, 1] pixels -> ``(n,)`` the explained score.
        pixels: ``(1, 3, H, W)`` [0, 1] image.
        cell_map: ``(gh, gw)`` the map pooled to the cells that are removed (most relevant = largest).
        fill: ``(1, 3, H, W)`` the "removed" image. Default: the image's mean colour.
        points: curve points after the start. Default 8.
        random_orders: random orders averaged. Default 2.
        seed: seed of the random orders.

    Returns:
        `Faithfulness`.
    """
    cells = np.asarray(cell_map, dtype=np.float64)
    grid = (int(cells.shape[0]), int(cells.shape[1]))
    if fill is None:
        fill = pixels.mean(dim=(2, 3), keepdim=True).expand_as(pixels)
    rng = np.random.default_rng(seed)
    orders = [np.argsort(-cells.reshape(-1), kind="stable")]
    orders += [rng.permutation(cells.size) for _ in range(random_orders)]
    batch: list[torch.Tensor] = []
    counts = np.unique(np.linspace(0, cells.size, points + 1).round().astype(int))
    masks = cell_masks(tuple(pixels.shape[-2:]), grid).to(pixels.device)
    for order in orders:
        for count in counts:
            changed = masks[list(order[:count])].any(dim=0) if count else torch.zeros_like(masks[0])
            batch.append(torch.where(changed.view(1, 1, *changed.shape), fill, pixels))
    with torch.no_grad():
        scores = score_fn(torch.cat(batch)).double().cpu().numpy().reshape(len(orders), len(counts))
    start, end = float(scores[0, 0]), float(scores[0, -1])
    span = start - end if abs(start - end) > 1e-12 else 1e-12
    grid_points = np.linspace(0, cells.size, points + 1)
    aucs = [auc((np.interp(grid_points, counts, row) - end) / span) for row in scores]
    return Faithfulness(float(aucs[0]), float(np.mean(aucs[1:])), start, end, int(cells.size))


def map_faithfulness(
    model: ClipModel,
    image: Image.Image,
    texts: str | Sequence[str],
    pixel_map: np.ndarray,
    target: Target | None = None,
    **options: Any,
) -> Faithfulness:
    """`deletion_faithfulness` of a CLIP map: the score it explains, removed patch by patch.

    Args:
        model: the CLIP model.
        image: the explained image.
        texts: the caption (or label set) of the explanation.
        pixel_map: ``(H, W)`` the map, at the image's size.
        target: the explained score; default as `counterclip.explainers.explain` (pair similarity for
            one text, the first label's probability for several).
        **options: passed to `deletion_faithfulness` (points, random_orders, seed).
    """
    from counterclip.explainers._core.common import PixelCodec, image_grid, model_guard, pool_to_grid
    from counterclip.explainers._core.targets import LabelProbability, PairSimilarity

    texts = [texts] if isinstance(texts, str) else list(texts)
    if target is None:
        target = (
            PairSimilarity(model.pair_score) if len(texts) == 1 else LabelProbability(0, model.pair_score)
        )
    codec = PixelCodec.of(model)
    grid = image_grid(model)
    with model_guard(model), torch.no_grad():
        text_emb = model.text_features(model.tokenize(texts).to(model.device))

        def score(batch: torch.Tensor) -> torch.Tensor:
            return torch.cat(
                [
                    target(model.image_features(codec.to_model(batch[i : i + 32])), text_emb)
                    for i in range(0, len(batch), 32)
                ]
            )

        pixels = codec.pil_to_pixels(image).to(model.device)
        return deletion_faithfulness(score, pixels, pool_to_grid(np.asarray(pixel_map), grid), **options)
