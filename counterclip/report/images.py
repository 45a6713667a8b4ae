"""Rendering of explanations as images: heat-map overlay, side-by-side panel, token strip, PNG files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from counterclip.explainers.base import Explanation
from counterclip.report.files import save_png

_GAP = 4  # pixels between panel tiles
_BACKGROUND = (255, 255, 255)


def colorize(pixel_map: np.ndarray, cmap: str | None = None) -> Image.Image:
    """Map values -> RGB image of the same ``(H, W)``.

    Non-negative maps are min-max scaled with ``inferno``; maps with both signs are scaled by the largest
    magnitude around zero with the diverging ``RdBu_r`` (white = 0), so a sign is never hidden.
    """
    from matplotlib import colormaps

    values = np.nan_to_num(np.asarray(pixel_map, dtype=np.float64))
    if values.ndim != 2:
        raise ValueError(f"pixel_map must be 2-D (H, W), got shape {values.shape}")
    signed = values.min() < 0 < values.max()
    if signed:
        scale = np.abs(values).max()
        unit = 0.5 + 0.5 * values / scale
        name = cmap or "RdBu_r"
    else:
        span = values.max() - values.min()
        unit = (values - values.min()) / span if span > 0 else np.zeros_like(values)
        name = cmap or "inferno"
    rgba = colormaps[name](unit)
    return Image.fromarray((rgba[..., :3] * 255).round().astype(np.uint8))


def _map_at(image: Image.Image, pixel_map: np.ndarray) -> np.ndarray:
    """The map resized to the image's size if needed (bilinear)."""
    values = np.asarray(pixel_map, dtype=np.float32)
    if values.shape == (image.height, image.width):
        return values
    resized = Image.fromarray(values, mode="F").resize(image.size, Image.BILINEAR)
    return np.asarray(resized, dtype=np.float64)


def overlay(
    image: Image.Image, pixel_map: np.ndarray, alpha: float = 0.5, cmap: str | None = None
) -> Image.Image:
    """Heat map blended over the image.

    Args:
        image: PIL image (any mode; shown as RGB).
        pixel_map: ``(H, W)`` map (resized to the image if its shape differs).
        alpha: weight of the heat map. Default 0.5.
        cmap: matplotlib colormap name; default ``inferno`` (or ``RdBu_r`` for signed maps).

    Returns:
        RGB PIL image of the image's size.
    """
    rgb = image.convert("RGB")
    heat = colorize(_map_at(rgb, pixel_map), cmap)
    return Image.blend(rgb, heat, alpha)


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def token_strip(tokens: Sequence[str], values: Sequence[float] | np.ndarray, height: int = 22) -> Image.Image:
    """A row of token boxes coloured by relevance (same colour scale as `colorize`), values printed below.

    Args:
        tokens: token strings.
        values: ``(T,)`` relevance per token.
        height: box height in pixels. Default 22.

    Returns:
        RGB PIL image (width grows with the tokens).
    """
    tokens = [str(t) for t in tokens]
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(tokens) != len(values):
        raise ValueError(f"{len(tokens)} tokens but {len(values)} values")
    font = _font()
    colours = np.asarray(colorize(values.reshape(1, -1) if len(values) else np.zeros((1, 1))))[0]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widths = [
        max(int(probe.textlength(t, font=font)), int(probe.textlength(f"{v:.2f}", font=font))) + 8
        for t, v in zip(tokens, values, strict=True)
    ]
    width = max(sum(widths) + _GAP * (len(widths) + 1), 1)
    strip = Image.new("RGB", (width, 2 * height), _BACKGROUND)
    draw = ImageDraw.Draw(strip)
    x = _GAP
    for token, value, box_width, colour in zip(tokens, values, widths, colours, strict=False):
        fill = tuple(int(c) for c in colour)
        draw.rectangle((x, 0, x + box_width, height - 2), fill=fill)
        ink = (0, 0, 0) if sum(fill) > 380 else (255, 255, 255)
        draw.text((x + 4, 4), token, fill=ink, font=font)
        draw.text((x + 4, height + 2), f"{value:.2f}", fill=(60, 60, 60), font=font)
        x += box_width + _GAP
    return strip


def panel(image: Image.Image, explanation: Explanation, alpha: float = 0.5) -> Image.Image:
    """Side by side: image | map | overlay (or image | edited | change for ``pixel-cf``), token strip below.

    Args:
        image: the explained PIL image.
        explanation: an `Explanation` with a ``pixel_map`` and/or ``tokens``/``token_map``.
        alpha: overlay weight. Default 0.5.

    Returns:
        RGB PIL image: three tiles of the image's size in a row (if there is a pixel map) and a title line,
        plus the token strip (if there is a token map).
    """
    rgb = image.convert("RGB")
    rows: list[Image.Image] = []
    if explanation.pixel_map is not None:
        pixel_map = _map_at(rgb, explanation.pixel_map)
        edited = explanation.extras.get("edited_image")
        if explanation.method == "pixel-cf" and isinstance(edited, Image.Image):
            tiles = [rgb, edited.convert("RGB").resize(rgb.size, Image.BICUBIC), colorize(pixel_map)]
        else:
            tiles = [rgb, colorize(pixel_map), overlay(rgb, pixel_map, alpha)]
        row = Image.new("RGB", (3 * rgb.width + 2 * _GAP, rgb.height), _BACKGROUND)
        for i, tile in enumerate(tiles):
            row.paste(tile, (i * (rgb.width + _GAP), 0))
        rows.append(row)
    if explanation.tokens is not None and explanation.token_map is not None:
        rows.append(token_strip(explanation.tokens, explanation.token_map))
    title = f"{explanation.method}  score={explanation.score:.3f}  {explanation.explains}"
    title_height = 14
    width = max(
        [r.width for r in rows]
        + [int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(title, font=_font())) + 8]
    )
    height = title_height + sum(r.height + _GAP for r in rows)
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    ImageDraw.Draw(canvas).text((2, 1), title, fill=(0, 0, 0), font=_font())
    y = title_height
    for row in rows:
        canvas.paste(row, (0, y))
        y += row.height + _GAP
    return canvas


def save_explanation(
    image: Image.Image, explanation: Explanation, path: str | os.PathLike[str]
) -> dict[str, Path]:
    """Write the `panel` of ``explanation`` over ``image`` to ``path`` (PNG), and for a pixel-space
    counterfactual also its edited image at the image's size beside it (``NAME.edited.png``).

    Returns:
        The files written: ``{"panel": path}`` and, when there is one, ``"edited"``.
    """
    written = {"panel": save_png(panel(image, explanation), path)}
    edited = explanation.extras.get("edited_image")
    if isinstance(edited, Image.Image):
        written["edited"] = save_png(edited.resize(image.size), Path(path).with_suffix(".edited.png"))
    return written
