"""The answers of a counterfactual report as HTML: each answer beside the original with its score before
-> after, its verdict badge, why it counts, what changed and its maps; then the baselines, once each.

Images are embedded as PNG ``data:`` URIs (`image_data_uri`), so the page stands alone.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from counterclip.explainers.figure import Tile, TokenRow, tile_html, tokens_html
from counterclip.report.files import png_data_uri
from counterclip.report.reading import verdict_reason
from counterclip.report.sentences import BASELINE_WORDS, VERDICT_WORDS, item_rule, number, quoted, verdict_of
from counterclip.report.words import changed_words, marked_html

THUMB = 160  # thumbnail side in pixels (the answers); the query image is shown at twice that


def image_data_uri(image: Image.Image, size: int = THUMB) -> str:
    """PNG thumbnail of ``image`` (longest side ``size``, enlarged when smaller) as a ``data:`` URI."""
    rgb = image.convert("RGB")
    if max(rgb.size) < size:
        factor = max(1, size // max(rgb.size))
        rgb = rgb.resize((rgb.width * factor, rgb.height * factor), Image.NEAREST)
    return png_data_uri(ImageOps.contain(rgb, (size, size)))


def _thumb_for(path: Path) -> str | None:
    try:
        with Image.open(path) as im:
            return image_data_uri(ImageOps.exif_transpose(im))
    except (OSError, ValueError):
        return None


def digits_of(result: Mapping[str, Any]) -> int:
    """Decimals the result's scores are shown with (probabilities in flip mode get one more)."""
    return 3 if result.get("mode") == "flip" else 2


def probability_bars(probabilities: Mapping[str, float], target: str | None) -> str:
    """Labelled bars of the labels' probabilities (the target marked), most probable first."""
    rows = []
    for label, value in sorted(probabilities.items(), key=lambda kv: -kv[1]):
        css = "target" if label == target else ""
        width = max(0.0, min(1.0, float(value))) * 100
        rows.append(
            f'<span class="{css}">{html.escape(label)}</span>'
            f'<span class="bar {css}"><span class="fill" style="width:{width:.1f}%"></span></span>'
            f'<span class="{css}">{float(value):.3f}</span>'
        )
    return f'<div class="probs" role="table" aria-label="label probabilities">{"".join(rows)}</div>'


# --- one answer ---------------------------------------------------------------------------------------------
def answer_html(
    item: Mapping[str, Any],
    result: Mapping[str, Any],
    root: Path,
    query_uri: str | None,
    maps: Sequence[Tile | TokenRow],
    captions: Mapping[int, Sequence[str]],
    query_captions: Sequence[str],
    card: str = "",
) -> str:
    """One answer: the original and the answer side by side (pictures, or the texts with the changed
    words marked), the facts (verdict, numbers, why it counts), its quality card (HTML) and its maps."""
    verdict = verdict_of(item)
    if item.get("kind") == "caption":
        left = _changed_texts(str(result.get("text") or ""), str(item.get("text") or ""))
    else:
        left = _image_pair(item, result, root, query_uri, captions.get(int(item["id"]), []), query_captions)
    body = [
        f'<div class="answer" data-id="{int(item["id"])}" data-verdict="{verdict}">',
        f'<div class="answer-head">{left}<div class="facts">{"".join(_facts(item, result))}</div></div>',
        card,
    ]
    if maps:
        body.append('<div class="maps cc-tiles">' + "".join(_map_html(m) for m in maps) + "</div>")
    body.append("</div>")
    return "".join(body)


def _image_pair(
    item: Mapping[str, Any],
    result: Mapping[str, Any],
    root: Path,
    query_uri: str | None,
    answer_captions: Sequence[str],
    query_captions: Sequence[str],
) -> str:
    """The original and the answer image, each with its score (and first caption), an arrow between."""
    digits = digits_of(result)
    uri = _thumb_for(root / item["path"]) if item.get("path") else None
    return (
        '<div class="pair">'
        + _image_figure(
            query_uri,
            f"the original<br><b>{number(item.get('score_before'), digits)}</b>"
            + (f"<br>{_captions_line(query_captions)}" if query_captions else ""),
            "the original",
        )
        + '<span class="arrow" aria-hidden="true">&rarr;</span>'
        + _image_figure(
            uri,
            f"{html.escape(item.get('path') or '')}<br><b>{number(item.get('score_after'), digits)}</b>"
            + (f"<br>{_captions_line(answer_captions)}" if answer_captions else ""),
            item.get("path") or "",
        )
        + "</div>"
    )


def _changed_texts(original: str, answer: str) -> str:
    """The original text and the answer, the removed words struck out and the added ones marked."""
    removed, added = changed_words(original, answer)
    return (
        '<div class="texts">'
        f'<span class="label">the original text</span><span class="was">{marked_html(original, removed, "del")}</span>'
        f'<span class="label">the answer</span><span class="now">{marked_html(answer, added, "mark")}</span>'
        "</div>"
    )


def _facts(item: Mapping[str, Any], result: Mapping[str, Any]) -> list[str]:
    """The answer's badge, rank and distance, its numbers, why it counts and what its verdict means (and
    the labels' probabilities in flip mode)."""
    verdict = verdict_of(item)
    kind = "caption" if item.get("kind") == "caption" else "image"
    facts = [
        f'<div>{_badge(item)} <span class="muted">#{item.get("rank")} &middot; distance to the original '
        f"{number(item.get('distance'), 3)}"
        + (f" &middot; {item['word_edits']} word(s) changed" if item.get("word_edits") is not None else "")
        + "</span></div>",
        _numbers(item, result),
        f'<div class="why"><b>why it counts:</b> {item_rule(item, result)}</div>',
    ]
    reason = verdict_reason(item)
    if reason:
        facts.append(f'<div class="why reason"><b>not verified:</b> {html.escape(reason)}</div>')
    facts.append(
        f'<div class="why muted">{html.escape(verdict)}: {html.escape(VERDICT_WORDS.get(verdict, {}).get(kind, ""))}</div>'
    )
    if result.get("mode") == "flip" and item.get("probabilities"):
        facts.append(probability_bars(item["probabilities"], result.get("validity", {}).get("target")))
    return facts


def _numbers(item: Mapping[str, Any], result: Mapping[str, Any]) -> str:
    digits = digits_of(result)
    name = (
        f"class probability of {quoted(result.get('validity', {}).get('target', 'target'))}"
        if result.get("mode") == "flip"
        else "score"
    )
    before, after = item.get("score_before"), item.get("score_after")
    delta = (after or 0.0) - (before or 0.0)
    arrow = "up" if delta >= 0 else "down"
    return (
        f'<div class="numbers">{name} {number(before, digits)} &rarr; <b>{number(after, digits)}</b> '
        f'<span class="{arrow}">({delta:+.{digits}f})</span></div>'
    )


def _badge(item: Mapping[str, Any]) -> str:
    verdict = verdict_of(item)
    kind = "caption" if item.get("kind") == "caption" else "image"
    words = VERDICT_WORDS.get(verdict, {}).get(kind, "")
    return f'<span class="verdict {verdict}" title="{html.escape(words)}">{verdict}</span>'


def _image_figure(src: str | None, caption: str, alt: str) -> str:
    image = (
        f'<img src="{src}" alt="{html.escape(alt)}">'
        if src
        else '<div class="muted">(the image could not be read)</div>'
    )
    return f"<figure>{image}<figcaption>{caption}</figcaption></figure>"


def _captions_line(captions: Sequence[str]) -> str:
    return f'<div class="caption">{quoted(captions[0])}</div>' if captions else ""


def _map_html(shown: Tile | TokenRow) -> str:
    return tokens_html(shown) if isinstance(shown, TokenRow) else tile_html(shown)


# --- the baselines ------------------------------------------------------------------------------------------
def baselines_html(result: Mapping[str, Any], root: Path, answered: Mapping[int, int], digits: int) -> str:
    """The baselines, collapsed, each group labelled; an item already shown (an answer, or in a group
    above) is named instead of drawn again."""
    groups = result.get("baselines", {})
    if not groups:
        return ""
    seen: dict[int, str] = {}
    sections = []
    for name, items in groups.items():
        key = next((k for k in BASELINE_WORDS if name.startswith(k)), name)
        label = name.replace("_", " ")
        cards = []
        for item in items:
            cards.append(_baseline_card(item, root, answered, seen, digits))
            seen.setdefault(int(item["id"]), label)
        sections.append(
            f"<h3>{html.escape(label)}</h3><p class='muted'>{html.escape(BASELINE_WORDS.get(key, ''))}</p>"
            + (
                f'<div class="baseline-list">{"".join(cards)}</div>'
                if cards
                else "<p class='muted'>none found</p>"
            )
        )
    return (
        '<details class="baselines"><summary>Baselines, for comparison (shown once each)</summary>'
        + "".join(sections)
        + "</details>"
    )


def _baseline_card(
    item: Mapping[str, Any], root: Path, answered: Mapping[int, int], seen: Mapping[int, str], digits: int
) -> str:
    """One baseline item: its picture (or quoted text), numbers and badge, or where it was shown already."""
    item_id = int(item["id"])
    shown = html.escape(item.get("path") or item.get("text") or f"#{item_id}")
    numbers = f"score {number(item.get('score_before'), digits)} &rarr; <b>{number(item.get('score_after'), digits)}</b>"
    if item_id in answered:
        return (
            f'<div class="baseline" data-id="{item_id}">{shown}<br>{numbers}<br>'
            f"<i>the same as answer #{answered[item_id]}</i></div>"
        )
    if item_id in seen:
        return (
            f'<div class="baseline" data-id="{item_id}">{shown}<br>{numbers}<br>'
            f"<i>the same as the {seen[item_id]} above</i></div>"
        )
    picture = ""
    if item.get("kind") == "image" and item.get("path"):
        uri = _thumb_for(root / item["path"])
        picture = f'<img src="{uri}" alt="{shown}">' if uri else ""
    elif item.get("text"):
        shown = quoted(item["text"])
    return f'<div class="baseline" data-id="{item_id}">{picture}{shown}<br>{numbers}<br>{_badge(item)}</div>'
