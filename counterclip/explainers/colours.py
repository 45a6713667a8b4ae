"""Colour scales and overlays: how a map's values become colours, and a picture laid over the image.

A map with negative values is diverging and centred at zero (``RdBu_r``: red raises the score, blue lowers
it, white is no effect), scaled by its largest magnitude; a map with none is sequential from zero
(``inferno``) to its largest value, never stretched from its minimum, so a flat map looks flat. A floor on
the scale keeps tiny values pale (0.0002 never looks saturated). An overlay lays the colour over the
original at full resolution with an opacity that follows the map's strength, so the image stays readable
where the map says nothing. Part of the one visual language of `counterclip.explainers.figure`.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

SEQUENTIAL = "inferno"  # maps without negative values: 0 (dark) .. largest value (bright)
DIVERGING = "RdBu_r"  # maps with both signs: blue (lowers) .. white (0) .. red (raises)
FLAT_SPREAD = 0.05  # a map whose values span less than this share of its largest magnitude is flat
OPACITY = 0.75  # overlay opacity at the map's strongest value
BAR_HEIGHT = 12  # pixels of a colour bar


# --- colour scales ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MapScale:
    """How a map's values become colours, and how to read them.

    Attributes:
        signed: diverging around zero (the map has negative values).
        low / high: the values at the ends of the colour bar (``-high`` / ``high`` when signed; 0 / max
            otherwise).
        state: ``ok``, ``empty`` (every value is 0) or ``flat`` (the values barely differ).
        spread: ``(min, max)`` of the map itself.
        floor: the smallest scale allowed (a map smaller than it stays pale).
    """

    signed: bool
    low: float
    high: float
    state: str = "ok"
    spread: tuple[float, float] = (0.0, 0.0)
    floor: float = 0.0

    @classmethod
    def of(cls, values: np.ndarray | Sequence[float], floor: float = 0.0) -> MapScale:
        """The scale of a map: diverging when it has negative values, sequential from 0 otherwise.

        Args:
            values: the map (any shape; NaN counts as 0).
            floor: the scale never goes below this magnitude (e.g. a share of the explained score), so a
                map of tiny values is drawn pale instead of saturated. Default 0.
        """
        array = np.nan_to_num(np.asarray(values, dtype=np.float64))
        if array.size == 0:
            return cls(False, 0.0, max(floor, 1.0), "empty", (0.0, 0.0), floor)
        lo, hi = float(array.min()), float(array.max())
        magnitude = max(abs(lo), abs(hi))
        if magnitude <= 1e-12:
            return cls(False, 0.0, max(floor, 1.0), "empty", (lo, hi), floor)
        flat = (hi - lo) < FLAT_SPREAD * magnitude
        state = "flat" if flat else "ok"
        bound = max(magnitude, floor)
        if lo < 0:
            return cls(True, -bound, bound, state, (lo, hi), floor)
        return cls(False, 0.0, bound, state, (lo, hi), floor)

    @property
    def cmap(self) -> str:
        return DIVERGING if self.signed else SEQUENTIAL

    def unit(self, values: np.ndarray) -> np.ndarray:
        """Positions on the colour bar, in [0, 1]."""
        array = np.nan_to_num(np.asarray(values, dtype=np.float64))
        if self.state == "empty":
            return np.full(array.shape, 0.5 if self.signed else 0.0)
        return np.clip((array - self.low) / (self.high - self.low), 0.0, 1.0)

    def strength(self, values: np.ndarray) -> np.ndarray:
        """How far each value is from "no effect", in [0, 1] (the overlay's opacity follows it)."""
        unit = self.unit(values)
        return np.abs(2.0 * unit - 1.0) if self.signed else unit

    def colours(self, values: np.ndarray) -> np.ndarray:
        """``values.shape + (3,)`` uint8 RGB."""
        from matplotlib import colormaps

        rgba = colormaps[self.cmap](self.unit(values))
        return (rgba[..., :3] * 255).round().astype(np.uint8)

    def bar(self, width: int = 256, height: int = BAR_HEIGHT) -> Image.Image:
        """The colour bar, ``low`` on the left."""
        ramp = np.tile(np.linspace(self.low, self.high, max(width, 2)), (max(height, 1), 1))
        return Image.fromarray(self.colours(ramp))

    def ends(self) -> tuple[str, str, str | None]:
        """Labels of the bar's left end, right end and middle (0, when signed)."""
        return _number(self.low), _number(self.high), ("0" if self.signed else None)

    def reading(self, unit: str = "the score") -> str:
        """What the colours mean, in words."""
        if self.signed:
            return f"red raises {unit}, blue lowers it, white: no effect"
        return f"bright: counts most for {unit}; dark or clear: counts little"

    def note(self) -> str | None:
        """A flag in words when the map should not be read as a picture of evidence."""
        lo, hi = self.spread
        if self.state == "empty":
            return "empty map: every value is 0, so the method found nothing that moves the score here"
        if self.state == "flat":
            return (
                f"flat map: every region counts about the same ({_number(lo)} to {_number(hi)}), "
                "so it singles out nothing"
            )
        if self.floor > 0 and max(abs(lo), abs(hi)) < 0.5 * self.floor:
            return (
                f"weak map: the largest value is {_number(max(abs(lo), abs(hi)))}, small beside the "
                f"scale {_number(self.floor)}; pale colours mean the parts barely move the score"
            )
        return None

    def legend(self, unit: str = "the score") -> dict[str, Any]:
        """JSON form for the page and reports: ends, reading, flag and the bar as a PNG data URI."""
        return {
            "signed": self.signed,
            "low": self.low,
            "high": self.high,
            "min": self.spread[0],
            "max": self.spread[1],
            "state": self.state,
            "reading": self.reading(unit),
            "note": self.note(),
            "bar": png_data_uri(self.bar()),
        }


def _number(value: float) -> str:
    """A short label for a colour-bar end (3 significant figures, a sign when negative)."""
    if value == 0:
        return "0"
    return f"{value:.3g}".replace("-", "\u2212")


def colorize(pixel_map: np.ndarray, cmap: str | None = None, scale: MapScale | None = None) -> Image.Image:
    """Map values -> RGB image of the same ``(H, W)``, on `MapScale.of` the map (or ``scale``).

    ``cmap`` overrides the colour map only (the scale stays).
    """
    values = np.nan_to_num(np.asarray(pixel_map, dtype=np.float64))
    if values.ndim != 2:
        raise ValueError(f"pixel_map must be 2-D (H, W), got shape {values.shape}")
    scale = scale or MapScale.of(values)
    if cmap is None:
        return Image.fromarray(scale.colours(values))
    from matplotlib import colormaps

    rgba = colormaps[cmap](scale.unit(values))
    return Image.fromarray((rgba[..., :3] * 255).round().astype(np.uint8))


def map_at(image: Image.Image, pixel_map: np.ndarray) -> np.ndarray:
    """The map resized to the image's size if needed (bilinear)."""
    values = np.asarray(pixel_map, dtype=np.float32)
    if values.shape == (image.height, image.width):
        return values.astype(np.float64)
    resized = Image.fromarray(values, mode="F").resize(image.size, Image.BILINEAR)
    return np.asarray(resized, dtype=np.float64)


def overlay(
    image: Image.Image,
    pixel_map: np.ndarray,
    alpha: float = OPACITY,
    cmap: str | None = None,
    scale: MapScale | None = None,
) -> Image.Image:
    """The map's colours laid over the image, opaque where the map is strong and clear where it is ~0.

    Args:
        image: PIL image (any mode; shown as RGB).
        pixel_map: ``(H, W)`` map (resized to the image if its shape differs).
        alpha: opacity at the map's strongest value. Default `OPACITY`.
        cmap: a matplotlib colour map instead of the scale's own.
        scale: the colour scale; default `MapScale.of` the map.

    Returns:
        RGB PIL image of the image's size (the image itself when the map is empty).
    """
    rgb = image.convert("RGB")
    values = map_at(rgb, pixel_map)
    scale = scale or MapScale.of(values)
    base = np.asarray(rgb, dtype=np.float64)
    heat = np.asarray(colorize(values, cmap, scale), dtype=np.float64)
    weight = (alpha * scale.strength(values))[..., None]
    blended = base * (1.0 - weight) + heat * weight
    return Image.fromarray(blended.round().clip(0, 255).astype(np.uint8))


# --- PNG ---------------------------------------------------------------------------------------------
def png_bytes(image: Image.Image, text: dict[str, str] | None = None) -> bytes:
    """``image`` as PNG, with ``text`` as PNG text chunks (titles and legends, for people and tools)."""
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_itxt(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def png_data_uri(image: Image.Image) -> str:
    """``data:image/png;base64,...`` of ``image``."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")
