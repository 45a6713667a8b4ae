"""Explanation-quality metrics: pointing game, deletion / insertion curves and AUC, max-sensitivity.

All functions are plain numpy/torch over maps and a black-box score function, so they apply to any
explainer (including the classical ones).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


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
