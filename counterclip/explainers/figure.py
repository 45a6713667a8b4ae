"""One visual language for every map: in the report, the PNG of ``counterclip explain``, the web page
and a notebook (``Explanation.show()``).

- Colour scales and overlays (`counterclip.explainers.colours`): `MapScale`, `colorize`, `overlay`.
- The parts of a figure and how each is drawn, as pixels and as HTML (`counterclip.explainers.tiles`):
  `Tile`, `TokenRow`, `tile_html`, `tokens_html`.
- Figures (here, `MapFigure`): titled tiles, each map with a colour bar that states its meaning and range,
  and notes in words: an empty or flat map, random weights, the map's faithfulness for that image. A
  figure renders to PNG (``save``, with its titles and legends as PNG text chunks), to HTML (``to_html``)
  and in notebooks (``_repr_png_``). `explanation_figure` draws one explanation.

Every name of the two modules above stays importable from here.

Examples::

    exp = explain(model, image, "a red circle")
    exp.show(image)                      # the labelled figure (a notebook draws it)
    exp.save("map.png", image)           # the same figure as a PNG
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from counterclip._fileio import atomic_write
from counterclip.explainers.colours import (  # noqa: F401 - re-exported
    DIVERGING,
    FLAT_SPREAD,
    OPACITY,
    SEQUENTIAL,
    MapScale,
    colorize,
    map_at,
    overlay,
    png_bytes,
    png_data_uri,
)
from counterclip.explainers.tiles import (  # noqa: F401 - re-exported
    FIGURE_CSS,
    INK,
    MAX_TILE,
    MIN_TILE,
    PAD,
    WARN,
    Tile,
    TokenRow,
    display_size,
    font,
    legend_html,
    text_block,
    tile_column,
    tile_html,
    token_block,
    tokens_html,
    wrap,
)


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
                len(wrap(t.title, max(i.width, MIN_TILE), head_face))
                for t, i in zip(self.tiles, shown, strict=True)
            ),
            default=1,
        )
        columns = [
            tile_column(tile, image, head_face, text_face, title_lines)
            for tile, image in zip(self.tiles, shown, strict=True)
        ]
        rows_width = sum(c.width for c in columns) + PAD * (len(columns) + 1) if columns else 0
        words = token_block(self.tokens, head_face, text_face) if self.tokens is not None else None
        width = max(rows_width, (words.width + 2 * PAD) if words else 0, 480)
        title = text_block(wrap(self.title, width - 2 * PAD, title_face), title_face, INK, width - 2 * PAD)
        notes = (
            text_block(
                [line for note in self.notes for line in wrap(note, width - 2 * PAD, text_face)],
                text_face,
                WARN,
                width - 2 * PAD,
            )
            if self.notes
            else None
        )
        columns_height = max((c.height for c in columns), default=0)
        height = PAD + title.height + PAD
        height += (notes.height + PAD) if notes else 0
        height += (columns_height + PAD) if columns else 0
        height += (words.height + PAD) if words else 0
        canvas = Image.new("RGB", (width, height), "white")
        y = PAD
        canvas.paste(title, (PAD, y))
        y += title.height + PAD
        if notes:
            canvas.paste(notes, (PAD, y))
            y += notes.height + PAD
        x = PAD
        for column in columns:
            canvas.paste(column, (x, y))
            x += column.width + PAD
        if columns:
            y += columns_height + PAD
        if words:
            canvas.paste(words, (PAD, y))
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
                    map_title or map_title_for(explains, explanation.extras.get("p_match")),
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
            f"which words count: {map_title_for(explains, explanation.extras.get('p_match'))}",
            [str(t) for t in explanation.tokens],
            values,
            MapScale.of(values, floor=token_floor(explanation)),
            tuple(marked),
        )
    return figure


def map_title_for(explains: str, p_match: float | None = None) -> str:
    """A tile title from an explanation's ``explains``: "similarity to 'x'" -> "why it matches 'x'" only
    when ``p_match`` (the pair's p(match)) is at least 0.5, "what in it counts toward 'x' (not a match)"
    below, "what in it counts toward 'x'" when unknown (a score alone does not say it matches)."""
    if explains.startswith("similarity to "):
        text = explains[len("similarity to ") :]
        if p_match is None:
            return f"what in it counts toward {text}"
        return (
            f"why it matches {text}" if p_match >= 0.5 else f"what in it counts toward {text} (not a match)"
        )
    for prefix, words in (
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
