"""Rendering of explanations as images, in the one visual language of `counterclip.explainers.figure`:
overlays at full resolution, colour bars with their meaning and range, titled tiles, flags in words.

``colorize`` / ``overlay`` / ``MapScale`` come from there (so the explainers' own ``Explanation.show()``
and every report draw the same thing); this module adds the figure of one explanation with its
faithfulness (`explanation_panel`), a token strip image, and the files of ``counterclip explain --out``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from counterclip.explainers.base import Explanation
from counterclip.explainers.figure import (
    MapFigure,
    MapScale,
    colorize,
    explanation_figure,
    font,
    overlay,
    token_floor,
)
from counterclip.report.files import save_png

_GAP = 4  # pixels between token boxes
_BACKGROUND = (255, 255, 255)

__all__ = [
    "MapScale",
    "colorize",
    "explanation_panel",
    "overlay",
    "panel",
    "save_explanation",
    "token_floor",
    "token_strip",
]


def token_strip(
    tokens: Sequence[str], values: Sequence[float] | np.ndarray, height: int = 24, floor: float = 0.0
) -> Image.Image:
    """A row of token boxes coloured on the map's `MapScale` (``floor``: its smallest scale), values
    printed below.

    Args:
        tokens: token strings.
        values: ``(T,)`` relevance per token.
        height: box height in pixels. Default 24.
        floor: the colour scale never goes below this magnitude. Default 0.

    Returns:
        RGB PIL image (width grows with the tokens).
    """
    tokens = [str(t) for t in tokens]
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(tokens) != len(values):
        raise ValueError(f"{len(tokens)} tokens but {len(values)} values")
    face = font(13)
    colours = MapScale.of(values, floor=floor).colours(values) if len(values) else np.zeros((0, 3))
    widths = [
        int(max(face.getlength(t), face.getlength(f"{v:+.2f}"))) + 10
        for t, v in zip(tokens, values, strict=True)
    ]
    width = max(sum(widths) + _GAP * (len(widths) + 1), 1)
    strip = Image.new("RGB", (width, 2 * height), _BACKGROUND)
    draw = ImageDraw.Draw(strip)
    x = _GAP
    for token, value, box_width, colour in zip(tokens, values, widths, colours, strict=True):
        fill = tuple(int(c) for c in colour)
        draw.rectangle((x, 0, x + box_width, height - 2), fill=fill, outline=(200, 200, 200))
        ink = (0, 0, 0) if 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2] > 140 else (255, 255, 255)
        draw.text((x + 5, 3), token, fill=ink, font=face)
        draw.text((x + 5, height + 2), f"{value:+.2f}", fill=(60, 60, 60), font=face)
        x += box_width + _GAP
    return strip


def explanation_panel(
    image: Image.Image | None,
    explanation: Explanation,
    faithfulness: object | None = None,
    title: str | None = None,
) -> MapFigure:
    """The labelled figure of one explanation (`counterclip.explainers.figure.explanation_figure`): the
    image, the map over it with its colour bar, the words, flags and the map's faithfulness."""
    return explanation_figure(explanation, image, title=title, faithfulness=faithfulness)


def panel(image: Image.Image, explanation: Explanation, faithfulness: object | None = None) -> Image.Image:
    """`explanation_panel` drawn as one RGB image (a token-only explanation ignores ``image``)."""
    shown = image if explanation.pixel_map is not None else None
    return explanation_panel(shown, explanation, faithfulness).render()


def save_explanation(
    image: Image.Image,
    explanation: Explanation,
    path: str | os.PathLike[str],
    faithfulness: object | None = None,
) -> dict[str, Path]:
    """Write the labelled figure of ``explanation`` over ``image`` to ``path`` (PNG, with its titles and
    legends as PNG text), and for a pixel-space counterfactual also its edited image at the image's size
    beside it (``NAME.edited.png``).

    Returns:
        The files written: ``{"panel": path}`` and, when there is one, ``"edited"``.
    """
    written = {"panel": explanation_panel(image, explanation, faithfulness).save(path)}
    edited = explanation.extras.get("edited_image")
    if isinstance(edited, Image.Image):
        written["edited"] = save_png(edited.resize(image.size), Path(path).with_suffix(".edited.png"))
    return written
