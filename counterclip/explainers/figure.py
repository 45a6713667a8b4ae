"""One visual language for every map: in the report, the PNG of ``counterclip explain``, the web page
and a notebook (``Explanation.show()``).

- Colour scales (`MapScale`): a map with negative values is diverging and centred at zero (``RdBu_r``:
  red raises the score, blue lowers it, white is no effect), scaled by its largest magnitude; a map with
  none is sequential from zero (``inferno``) to its largest value, never stretched from its minimum, so a
  flat map looks flat. A floor on the scale keeps tiny values pale (0.0002 never looks saturated).
- Overlays (`overlay`): the colour is laid over the original at full resolution with an opacity that
  follows the map's strength, so the image stays readable where the map says nothing.
- Figures (`MapFigure`): titled tiles, each map with a colour bar that states its meaning and range, and
  notes in words: an empty or flat map, random weights, the map's faithfulness for that image. A figure
  renders to PNG (``save``, with its titles and legends as PNG text chunks), to HTML (``to_html``) and
  in notebooks (``_repr_png_``).

Examples::

    exp = explain(model, image, "a red circle")
    exp.show(image)                      # the labelled figure (a notebook draws it)
    exp.save("map.png", image)           # the same figure as a PNG
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from counterclip._fileio import atomic_write

SEQUENTIAL = "inferno"  # maps without negative values: 0 (dark) .. largest value (bright)
DIVERGING = "RdBu_r"  # maps with both signs: blue (lowers) .. white (0) .. red (raises)
FLAT_SPREAD = 0.05  # a map whose values span less than this share of its largest magnitude is flat
MIN_TILE = 224  # smaller images are enlarged (nearest neighbour, whole factors) to at least this side
MAX_TILE = 512  # larger images are shrunk to this side
OPACITY = 0.75  # overlay opacity at the map's strongest value

_INK = (20, 20, 20)
_MUTED = (90, 90, 90)
_WARN = (150, 60, 0)
_PAD = 10
_BAR_HEIGHT = 12


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

    def bar(self, width: int = 256, height: int = _BAR_HEIGHT) -> Image.Image:
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


# --- drawing helpers ----------------------------------------------------------------------------------
@lru_cache(maxsize=8)
def font(size: int = 13, bold: bool = False) -> ImageFont.ImageFont:
    """DejaVu Sans (shipped with matplotlib) at ``size`` pixels; Pillow's default font otherwise."""
    try:
        from matplotlib import font_manager

        path = font_manager.findfont("DejaVu Sans:bold" if bold else "DejaVu Sans", fallback_to_default=True)
        return ImageFont.truetype(path, size)
    except (ImportError, OSError, ValueError):
        return ImageFont.load_default(size)


def _wrap(text: str, width: int, face: ImageFont.ImageFont) -> list[str]:
    """``text`` broken into lines no wider than ``width`` pixels (long words are kept whole)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}".strip()
            if line and face.getlength(candidate) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def _text_block(
    lines: list[str], face: ImageFont.ImageFont, fill: tuple[int, int, int], width: int
) -> Image.Image:
    height = _line_height(face)
    block = Image.new("RGB", (max(width, 1), max(height * len(lines), 1)), "white")
    draw = ImageDraw.Draw(block)
    for i, line in enumerate(lines):
        draw.text((0, i * height), line, fill=fill, font=face)
    return block


def _line_height(face: ImageFont.ImageFont) -> int:
    ascent, descent = face.getmetrics() if hasattr(face, "getmetrics") else (10, 3)
    return int(ascent + descent + 3)


def display_size(image: Image.Image) -> Image.Image:
    """``image`` at its display size: small ones enlarged by a whole factor (pixels stay sharp), large
    ones shrunk to `MAX_TILE`."""
    side = max(image.size)
    if side < MIN_TILE:
        factor = -(-MIN_TILE // side)
        return image.resize((image.width * factor, image.height * factor), Image.NEAREST)
    if side > MAX_TILE:
        shrink = MAX_TILE / side
        return image.resize(
            (max(1, round(image.width * shrink)), max(1, round(image.height * shrink))), Image.LANCZOS
        )
    return image


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


# --- figures --------------------------------------------------------------------------------------------
@dataclass
class Tile:
    """One titled picture of a figure: the original, an overlay, an edited image...

    Attributes:
        title: what the tile shows, in words ("why it matches 'a red circle'").
        image: the picture at the explained image's resolution (enlarged or shrunk for display).
        scale: the colour scale of the map drawn on it (None for a plain picture: no colour bar).
        unit: what the map's values are for the reading ("the score", "p('a dog')").
        notes: lines under the legend (faithfulness, flags).
    """

    title: str
    image: Image.Image
    scale: MapScale | None = None
    unit: str = "the score"
    notes: list[str] = field(default_factory=list)
    reading: str | None = None  # the legend's words, when the scale's default does not fit

    def legend_words(self) -> str:
        """What the tile's colours mean."""
        return self.reading or (self.scale.reading(self.unit) if self.scale is not None else "")

    def all_notes(self) -> list[str]:
        """The scale's flag (if any) first, then the tile's notes."""
        flag = self.scale.note() if self.scale is not None else None
        return ([flag] if flag else []) + list(self.notes)


@dataclass
class TokenRow:
    """Words coloured by a token map, with the changed words marked.

    Attributes:
        title: what the row shows.
        tokens / values: the words and their values.
        scale: the colour scale (a floor keeps tiny values pale).
        marked: positions of words to mark (the words a counterfactual changed).
        notes: lines under the legend.
    """

    title: str
    tokens: list[str]
    values: np.ndarray
    scale: MapScale
    marked: tuple[int, ...] = ()
    unit: str = "the score"
    notes: list[str] = field(default_factory=list)

    def all_notes(self) -> list[str]:
        flag = self.scale.note()
        return ([flag] if flag else []) + list(self.notes)


@dataclass
class MapFigure:
    """A labelled figure: a title, titled tiles side by side, an optional row of words, and notes.

    ``render()`` draws it (PIL), ``save(path)`` writes it as PNG, ``to_html()`` gives the same content as
    an HTML fragment; a notebook shows it by itself.
    """

    title: str
    tiles: list[Tile] = field(default_factory=list)
    tokens: TokenRow | None = None
    notes: list[str] = field(default_factory=list)

    # -- PNG ------------------------------------------------------------------------------------------
    def render(self) -> Image.Image:
        """The figure as one RGB image."""
        title_face, head_face, text_face = font(16, True), font(13, True), font(12)
        shown = [display_size(tile.image.convert("RGB")) for tile in self.tiles]
        title_lines = max(
            (
                len(_wrap(t.title, max(i.width, MIN_TILE), head_face))
                for t, i in zip(self.tiles, shown, strict=True)
            ),
            default=1,
        )
        columns = [
            _tile_column(tile, image, head_face, text_face, title_lines)
            for tile, image in zip(self.tiles, shown, strict=True)
        ]
        rows_width = sum(c.width for c in columns) + _PAD * (len(columns) + 1) if columns else 0
        token_block = _token_block(self.tokens, head_face, text_face) if self.tokens is not None else None
        width = max(rows_width, (token_block.width + 2 * _PAD) if token_block else 0, 480)
        title = _text_block(
            _wrap(self.title, width - 2 * _PAD, title_face), title_face, _INK, width - 2 * _PAD
        )
        notes = (
            _text_block(
                [line for note in self.notes for line in _wrap(note, width - 2 * _PAD, text_face)],
                text_face,
                _WARN,
                width - 2 * _PAD,
            )
            if self.notes
            else None
        )
        columns_height = max((c.height for c in columns), default=0)
        height = _PAD + title.height + _PAD
        height += (notes.height + _PAD) if notes else 0
        height += (columns_height + _PAD) if columns else 0
        height += (token_block.height + _PAD) if token_block else 0
        canvas = Image.new("RGB", (width, height), "white")
        y = _PAD
        canvas.paste(title, (_PAD, y))
        y += title.height + _PAD
        if notes:
            canvas.paste(notes, (_PAD, y))
            y += notes.height + _PAD
        x = _PAD
        for column in columns:
            canvas.paste(column, (x, y))
            x += column.width + _PAD
        if columns:
            y += columns_height + _PAD
        if token_block:
            canvas.paste(token_block, (_PAD, y))
        return canvas

    def text_chunks(self) -> dict[str, str]:
        """What the figure says, as PNG text: ``Title`` and ``Description`` (tile titles, legends, notes)."""
        lines = list(self.notes)
        for tile in self.tiles:
            lines.append(f"tile: {tile.title}")
            if tile.scale is not None:
                low, high, _ = tile.scale.ends()
                lines.append(f"  legend: {low} to {high}; {tile.legend_words()}")
            lines += [f"  note: {note}" for note in tile.all_notes()]
        if self.tokens is not None:
            low, high, _ = self.tokens.scale.ends()
            lines.append(f"words: {self.tokens.title}")
            lines.append(f"  legend: {low} to {high}; {self.tokens.scale.reading(self.tokens.unit)}")
            if self.tokens.marked:
                lines.append("  changed: " + ", ".join(self.tokens.tokens[i] for i in self.tokens.marked))
            lines += [f"  note: {note}" for note in self.tokens.all_notes()]
        return {"Title": self.title, "Description": "\n".join(lines)}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the figure as PNG (atomically; titles and legends also as PNG text chunks)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(target, png_bytes(self.render(), self.text_chunks()))

    def _repr_png_(self) -> bytes:
        return png_bytes(self.render())

    # -- HTML -----------------------------------------------------------------------------------------
    def to_html(self) -> str:
        """The figure as an HTML fragment (images as data URIs; style from `FIGURE_CSS`)."""
        parts = [f'<div class="cc-figure"><h3 class="cc-title">{html.escape(self.title)}</h3>']
        parts += [f'<p class="cc-note">{html.escape(note)}</p>' for note in self.notes]
        if self.tiles:
            parts.append('<div class="cc-tiles">' + "".join(tile_html(t) for t in self.tiles) + "</div>")
        if self.tokens is not None:
            parts.append(tokens_html(self.tokens))
        parts.append("</div>")
        return "".join(parts)

    def _repr_html_(self) -> str:
        return f"<style>{FIGURE_CSS}</style>{self.to_html()}"


FIGURE_CSS = """
.cc-figure{margin:8px 0;font-family:system-ui,sans-serif}
.cc-title{font-size:1.05em;margin:4px 0 8px}
.cc-tiles{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
.cc-map{margin:0;max-width:520px}
.cc-map h4{margin:0 0 4px;font-size:.95em}
.cc-map img.cc-shown{display:block;image-rendering:pixelated;max-width:100%;height:auto}
.cc-legend{font-size:.8em;color:#444;margin-top:4px}
.cc-legend img{display:block;width:100%;height:12px}
.cc-ends{display:flex;justify-content:space-between}
.cc-note{font-size:.8em;color:#8a3d00;margin:4px 0}
.cc-faith{font-size:.8em;color:#333;margin:4px 0}
.cc-tokens{display:flex;flex-wrap:wrap;gap:4px;margin:6px 0}
.cc-tok{display:inline-flex;flex-direction:column;align-items:center;font-size:.85em}
.cc-tok .cc-word{padding:2px 6px;border-radius:3px;border:1px solid #ccc}
.cc-tok.cc-changed .cc-word{outline:3px solid #111;outline-offset:1px;font-weight:700}
.cc-tok .cc-value{font-size:.75em;color:#555}
.cc-changed-label{font-size:.7em;font-weight:700;color:#111}
"""


def legend_html(scale: MapScale, reading: str) -> str:
    """The colour bar of a map with its end values and its reading, as HTML."""
    low, high, middle = scale.ends()
    ends = f"<span>{html.escape(low)}</span>" + (f"<span>{middle}</span>" if middle else "")
    ends += f"<span>{html.escape(high)}</span>"
    return (
        f'<div class="cc-legend"><img alt="colour scale from {html.escape(low)} to {html.escape(high)}" '
        f'src="{png_data_uri(scale.bar())}"><div class="cc-ends">{ends}</div>'
        f'<div class="cc-reading">{html.escape(reading)}</div></div>'
    )


def tile_html(tile: Tile) -> str:
    """One tile as an HTML ``figure``: title, picture, legend, notes."""
    shown = display_size(tile.image.convert("RGB"))
    parts = [
        f'<figure class="cc-map{"" if tile.scale is not None else " cc-plain"}" '
        f'style="width:{max(shown.width, MIN_TILE)}px"><h4>{html.escape(tile.title)}</h4>',
        f'<img class="cc-shown" width="{shown.width}" height="{shown.height}" alt="{html.escape(tile.title)}" '
        f'src="{png_data_uri(tile.image.convert("RGB"))}">',
    ]
    if tile.scale is not None:
        parts.append(legend_html(tile.scale, tile.legend_words()))
    for note in tile.all_notes():
        css = "cc-faith" if note.startswith("faithfulness") else "cc-note"
        parts.append(f'<p class="{css}">{html.escape(note)}</p>')
    parts.append("</figure>")
    return "".join(parts)


def tokens_html(row: TokenRow) -> str:
    """A word row as HTML: each word coloured on the row's scale, its value below, changed words marked."""
    colours = row.scale.colours(np.asarray(row.values, dtype=np.float64).reshape(-1))
    chips = []
    for position, (token, value, colour) in enumerate(zip(row.tokens, row.values, colours, strict=True)):
        r, g, b = (int(c) for c in colour)
        ink = "#000" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#fff"
        changed = position in row.marked
        chips.append(
            f'<span class="cc-tok{" cc-changed" if changed else ""}" data-value="{float(value):.6g}">'
            f'<span class="cc-word" style="background:rgb({r},{g},{b});color:{ink}">{html.escape(str(token))}</span>'
            f'<span class="cc-value">{float(value):+.3g}</span>'
            + ('<span class="cc-changed-label">changed</span>' if changed else "")
            + "</span>"
        )
    notes = "".join(f'<p class="cc-note">{html.escape(n)}</p>' for n in row.all_notes())
    return (
        f'<figure class="cc-map cc-words"><h4>{html.escape(row.title)}</h4>'
        f'<div class="cc-tokens">{"".join(chips)}</div>{legend_html(row.scale, row.scale.reading(row.unit))}'
        f"{notes}</figure>"
    )


def _tile_column(
    tile: Tile, shown: Image.Image, head: ImageFont.ImageFont, text: ImageFont.ImageFont, title_lines: int = 1
) -> Image.Image:
    """Title above the picture (padded to ``title_lines`` so pictures side by side line up), colour bar
    and notes below (PIL)."""
    width = max(shown.width, MIN_TILE)
    lines = _wrap(tile.title, width, head)
    lines += [""] * (title_lines - len(lines))
    blocks: list[tuple[Image.Image, int]] = [(_text_block(lines, head, _INK, width), 4)]
    blocks.append((shown, 4))
    if tile.scale is not None:
        blocks.append((_legend_block(tile.scale, width, text, tile.legend_words()), 4))
    for note in tile.all_notes():
        colour = _MUTED if note.startswith("faithfulness") else _WARN
        blocks.append((_text_block(_wrap(note, width, text), text, colour, width), 4))
    height = sum(b.height + gap for b, gap in blocks)
    column = Image.new("RGB", (width, height), "white")
    y = 0
    for block, gap in blocks:
        column.paste(block, (0, y))
        y += block.height + gap
    return column


def _legend_block(scale: MapScale, width: int, face: ImageFont.ImageFont, words: str) -> Image.Image:
    """Colour bar, its end values (and 0 in the middle when signed), and the reading, as one image."""
    line = _line_height(face)
    reading = _wrap(words, width, face)
    block = Image.new("RGB", (width, _BAR_HEIGHT + 2 + line + line * len(reading)), "white")
    block.paste(scale.bar(width, _BAR_HEIGHT), (0, 0))
    draw = ImageDraw.Draw(block)
    draw.rectangle((0, 0, width - 1, _BAR_HEIGHT - 1), outline=(120, 120, 120))
    low, high, middle = scale.ends()
    y = _BAR_HEIGHT + 2
    draw.text((0, y), low, fill=_INK, font=face)
    draw.text((width - face.getlength(high), y), high, fill=_INK, font=face)
    if middle:
        draw.text(((width - face.getlength(middle)) / 2, y), middle, fill=_INK, font=face)
    for i, text_line in enumerate(reading):
        draw.text((0, y + line * (i + 1)), text_line, fill=_MUTED, font=face)
    return block


def _token_block(row: TokenRow, head: ImageFont.ImageFont, text: ImageFont.ImageFont) -> Image.Image:
    """The word row (PIL): coloured boxes, values below, changed words outlined and labelled."""
    word_face = font(14)
    values = np.asarray(row.values, dtype=np.float64).reshape(-1)
    colours = row.scale.colours(values)
    labels = [f"{v:+.3g}" for v in values]
    widths = [
        int(
            max(
                word_face.getlength(str(t)),
                text.getlength(label),
                text.getlength("changed") if i in row.marked else 0,
            )
        )
        + 14
        for i, (t, label) in enumerate(zip(row.tokens, labels, strict=True))
    ]
    line = _line_height(text)
    box = _line_height(word_face) + 6
    strip_width = max(sum(widths) + 6 * len(widths), 1)
    width = max(strip_width, 360)
    title = _text_block(_wrap(row.title, width, head), head, _INK, width)
    legend = _legend_block(row.scale, min(width, 360), text, row.scale.reading(row.unit))
    notes = [_text_block(_wrap(n, width, text), text, _WARN, width) for n in row.all_notes()]
    strip_height = box + 2 * line + 6
    height = title.height + 6 + strip_height + legend.height + sum(n.height + 4 for n in notes) + 6
    block = Image.new("RGB", (width, height), "white")
    block.paste(title, (0, 0))
    draw = ImageDraw.Draw(block)
    x, y = 0, title.height + 6
    for i, (token, label, w, colour) in enumerate(zip(row.tokens, labels, widths, colours, strict=True)):
        fill = tuple(int(c) for c in colour)
        draw.rectangle((x + 3, y + 3, x + w - 3, y + box - 3), fill=fill, outline=(200, 200, 200))
        if i in row.marked:
            draw.rectangle((x, y, x + w, y + box), outline=(0, 0, 0), width=3)
        ink = (0, 0, 0) if 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2] > 140 else (255, 255, 255)
        draw.text((x + 7, y + 5), str(token), fill=ink, font=word_face)
        draw.text((x + 7, y + box + 2), label, fill=_MUTED, font=text)
        if i in row.marked:
            draw.text((x + 7, y + box + 2 + line), "changed", fill=(0, 0, 0), font=font(12, True))
        x += w + 6
    y += strip_height
    block.paste(legend, (0, y))
    y += legend.height + 6
    for note in notes:
        block.paste(note, (0, y))
        y += note.height + 4
    return block


# --- explanations -----------------------------------------------------------------------------------------
class ExplanationLike(Protocol):
    """What a figure reads of a `counterclip.explainers.base.Explanation`.

    Named here rather than imported: ``Explanation.show`` draws with this module, so this module does not
    import that one (no import circle, not even for type checkers).
    """

    method: str
    score: float
    pixel_map: np.ndarray | None
    tokens: list[str] | None
    token_map: np.ndarray | None
    explains: str
    extras: dict[str, Any]

    def flags(self) -> list[str]: ...


def explanation_figure(
    explanation: ExplanationLike,
    image: Image.Image | None = None,
    title: str | None = None,
    map_title: str | None = None,
    faithfulness: Any = None,
    marked: Sequence[int] = (),
) -> MapFigure:
    """The labelled figure of one explanation.

    Args:
        explanation: any `Explanation` (pixel map, token map or both; ``pixel-cf`` draws its edit).
        image: the explained image (needed to draw a pixel map; the map is laid over it).
        title: the figure's title. Default: method, what it explains and the score.
        map_title: the map tile's title. Default: "where the <what it explains> comes from".
        faithfulness: a `counterclip.explainers.metrics.Faithfulness` for the map, shown under it.
        marked: token positions to mark as changed.

    Returns:
        `MapFigure`.
    """
    explains = explanation.explains or "the score"
    figure = MapFigure(title or f"{explanation.method}: {explains} = {explanation.score:.4g}")
    figure.notes += [flag for flag in explanation.flags() if flag.startswith("random weights")]
    if explanation.pixel_map is not None and image is not None:
        rgb = image.convert("RGB")
        values = map_at(rgb, explanation.pixel_map)
        edited = explanation.extras.get("edited_image")
        if explanation.method == "pixel-cf" and isinstance(edited, Image.Image):
            figure.tiles += _pixel_counterfactual_tiles(explanation, rgb, edited, values)
        else:
            scale = MapScale.of(values)
            notes = [faithfulness.describe()] if faithfulness is not None else []
            figure.tiles.append(Tile("the image", rgb))
            figure.tiles.append(
                Tile(
                    map_title or map_title_for(explains),
                    overlay(rgb, values, scale=scale),
                    scale,
                    notes=notes,
                )
            )
    elif explanation.pixel_map is not None:
        figure.notes.append("the pixel map is not drawn: pass the explained image (show(image))")
    if explanation.tokens is not None and explanation.token_map is not None:
        values = np.asarray(explanation.token_map, dtype=np.float64).reshape(-1)
        figure.tokens = TokenRow(
            f"which words count: {map_title_for(explains)}",
            [str(t) for t in explanation.tokens],
            values,
            MapScale.of(values, floor=token_floor(explanation)),
            tuple(marked),
        )
    return figure


def map_title_for(explains: str) -> str:
    """A tile title from an explanation's ``explains`` ("similarity to 'x'" -> "why it matches 'x'")."""
    for prefix, words in (
        ("similarity to ", "why it matches "),
        ("probability of ", "why it is labelled "),
        ("logit of ", "why it is labelled "),
    ):
        if explains.startswith(prefix):
            return words + explains[len(prefix) :]
    if explains.startswith("margin ") and " over " in explains:
        first, _, second = explains[len("margin ") :].partition(" over ")
        return f"why {first} rather than {second}"
    return f"what drives the {explains}" if explains else "what drives the score"


#: Methods whose token values are in the score's own units (attributions summing to a change of the
#: score, or weights of a linear model of it), so a floor relative to the score applies.
SCORE_UNIT_METHODS = ("ig", "lime")


def token_floor(explanation: ExplanationLike) -> float:
    """The smallest colour scale of a token map: a tenth of the change it explains, so attributions
    that are tiny beside the score stay pale (methods in `SCORE_UNIT_METHODS`; 0 for the others, whose
    values have units of their own).

    The change is ``score - baseline`` when the explainer records a baseline score (integrated
    gradients), else the score itself (a probability or a similarity).
    """
    if explanation.method not in SCORE_UNIT_METHODS:
        return 0.0
    baseline = explanation.extras.get("baseline_score")
    total = explanation.score - baseline if isinstance(baseline, (int, float)) else explanation.score
    return 0.1 * abs(float(total))


def _pixel_counterfactual_tiles(
    explanation: ExplanationLike, rgb: Image.Image, edited: Image.Image, change: np.ndarray
) -> list[Tile]:
    """Original, edited image, and where it changed (in 8-bit levels), titled honestly."""
    extras = explanation.extras
    moved = extras.get("score_8bit", explanation.score) - explanation.score
    wanted = extras.get("direction", "increase")
    reached = (moved > 0) == (wanted == "increase") and moved != 0
    levels = change * 255.0 / 3.0  # sum over channels of |x - x0| in [0, 1] -> mean 8-bit levels
    scale = MapScale.of(levels)
    total = float(levels.sum())
    top = np.sort(levels.reshape(-1))[::-1][: max(1, levels.size // 10)]
    concentrated = total > 0 and float(top.sum()) / total >= 0.3
    where = (
        "most of the change sits in a few regions"
        if concentrated
        else "the change is spread over the whole image like noise: an adversarial edit, not a new object"
    )
    edited_title = (
        f"edited: {extras.get('score_8bit', explanation.score):.4g} "
        f"({moved:+.3g}, {'moved as asked' if reached else 'did NOT move as asked'})"
    )
    return [
        Tile(f"the image: {explanation.score:.4g}", rgb),
        Tile(edited_title, edited.convert("RGB").resize(rgb.size, Image.BICUBIC)),
        Tile(
            "where the pixels changed (mean 8-bit levels)",
            colorize(levels, scale=scale),
            scale,
            notes=[where],
            reading="bright: changed most; dark: unchanged",
        ),
    ]
