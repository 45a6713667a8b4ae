"""The parts of a figure (`Tile`: a titled picture with its colour bar; `TokenRow`: words coloured by a
token map) and how each is drawn: as pixels (PIL, for PNG files and notebooks) and as HTML (for reports
and the web page). Part of the one visual language of `counterclip.explainers.figure`.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from counterclip.explainers.colours import BAR_HEIGHT, MapScale, png_data_uri

MIN_TILE = 224  # smaller images are enlarged (nearest neighbour, whole factors) to at least this side
MAX_TILE = 512  # larger images are shrunk to this side

INK = (20, 20, 20)
MUTED = (90, 90, 90)
WARN = (150, 60, 0)
PAD = 10


# --- the parts ---------------------------------------------------------------------------------------------
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


def wrap(text: str, width: int, face: ImageFont.ImageFont) -> list[str]:
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


def text_block(
    lines: list[str], face: ImageFont.ImageFont, fill: tuple[int, int, int], width: int
) -> Image.Image:
    height = line_height(face)
    block = Image.new("RGB", (max(width, 1), max(height * len(lines), 1)), "white")
    draw = ImageDraw.Draw(block)
    for i, line in enumerate(lines):
        draw.text((0, i * height), line, fill=fill, font=face)
    return block


def line_height(face: ImageFont.ImageFont) -> int:
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


# --- the parts as pixels ------------------------------------------------------------------------------
def tile_column(
    tile: Tile, shown: Image.Image, head: ImageFont.ImageFont, text: ImageFont.ImageFont, title_lines: int = 1
) -> Image.Image:
    """Title above the picture (padded to ``title_lines`` so pictures side by side line up), colour bar
    and notes below (PIL)."""
    width = max(shown.width, MIN_TILE)
    lines = wrap(tile.title, width, head)
    lines += [""] * (title_lines - len(lines))
    blocks: list[tuple[Image.Image, int]] = [(text_block(lines, head, INK, width), 4)]
    blocks.append((shown, 4))
    if tile.scale is not None:
        blocks.append((legend_block(tile.scale, width, text, tile.legend_words()), 4))
    for note in tile.all_notes():
        colour = MUTED if note.startswith("faithfulness") else WARN
        blocks.append((text_block(wrap(note, width, text), text, colour, width), 4))
    height = sum(b.height + gap for b, gap in blocks)
    column = Image.new("RGB", (width, height), "white")
    y = 0
    for block, gap in blocks:
        column.paste(block, (0, y))
        y += block.height + gap
    return column


def legend_block(scale: MapScale, width: int, face: ImageFont.ImageFont, words: str) -> Image.Image:
    """Colour bar, its end values (and 0 in the middle when signed), and the reading, as one image."""
    line = line_height(face)
    reading = wrap(words, width, face)
    block = Image.new("RGB", (width, BAR_HEIGHT + 2 + line + line * len(reading)), "white")
    block.paste(scale.bar(width, BAR_HEIGHT), (0, 0))
    draw = ImageDraw.Draw(block)
    draw.rectangle((0, 0, width - 1, BAR_HEIGHT - 1), outline=(120, 120, 120))
    low, high, middle = scale.ends()
    y = BAR_HEIGHT + 2
    draw.text((0, y), low, fill=INK, font=face)
    draw.text((width - face.getlength(high), y), high, fill=INK, font=face)
    if middle:
        draw.text(((width - face.getlength(middle)) / 2, y), middle, fill=INK, font=face)
    for i, text_line in enumerate(reading):
        draw.text((0, y + line * (i + 1)), text_line, fill=MUTED, font=face)
    return block


def token_block(row: TokenRow, head: ImageFont.ImageFont, text: ImageFont.ImageFont) -> Image.Image:
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
    line = line_height(text)
    box = line_height(word_face) + 6
    strip_width = max(sum(widths) + 6 * len(widths), 1)
    width = max(strip_width, 360)
    title = text_block(wrap(row.title, width, head), head, INK, width)
    legend = legend_block(row.scale, min(width, 360), text, row.scale.reading(row.unit))
    notes = [text_block(wrap(n, width, text), text, WARN, width) for n in row.all_notes()]
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
        draw.text((x + 7, y + box + 2), label, fill=MUTED, font=text)
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


# --- the parts as HTML --------------------------------------------------------------------------------
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
        css = "cc-faith" if note.startswith(("faithfulness", "quality:")) else "cc-note"
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
