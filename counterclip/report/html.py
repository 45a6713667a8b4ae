"""Self-contained HTML report of a counterfactual query (images embedded as data URIs).

What a person reads, top to bottom: the question in one sentence; the query (its image, file name, text,
score, captions); the rule an answer had to pass in plain words with the numbers it compares against, the
calibration and the warnings; then each answer beside the original with its score before -> after, its
verdict badge, why it counts in words, what changed (the edited words marked on the text side, the
labels' probabilities as labelled bars in flip mode) and its maps, each titled, with a colour bar, its
reading and its faithfulness for that image; the baselines once, labelled, collapsed.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from counterclip.explainers.figure import FIGURE_CSS, Tile, TokenRow, tile_html, tokens_html
from counterclip.report.files import png_data_uri, write_text_atomic
from counterclip.report.words import changed_words, marked_html

THUMB = 160  # thumbnail side in pixels (the answers); the query image is shown at twice that

#: What each verdict means, for an image and for a caption (the engine's ``VERDICTS``, said for a reader).
VERDICT_WORDS: dict[str, dict[str, str]] = {
    "verified": {
        "image": "passes the rule, was re-scored from its own file, and the calibration agrees it really is "
        "what was asked",
        "caption": "passes the rule, was re-scored from its text, and the calibration agrees it really is "
        "what was asked",
    },
    "weak": {
        "image": "passes the rule only relative to what this index holds: the calibration does not call it "
        "a real match (see the warnings)",
        "caption": "passes the rule only relative to what this index holds: the calibration does not call "
        "it a real match (see the warnings)",
    },
    "unverifiable": {
        "image": "passes the rule on its stored vector, but there is no file to re-score it from",
        "caption": "passes the rule on its stored vector, but it could not be re-scored",
    },
    "unverified": {"image": "not re-scored from its file", "caption": "not re-scored from its text"},
}

BASELINE_WORDS = {
    "nearest_unlike_neighbour": "the closest item found by the text alone, ignoring the original",
    "closest_valid_in_top": "the valid item closest to the original among the text's top matches",
}

_CSS = (
    """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1240px;line-height:1.35}
h1{font-size:1.35em;margin-bottom:.2em} h2{font-size:1.1em;margin-top:28px}
.muted{color:#666;font-size:.9em}
.query{display:flex;gap:20px;flex-wrap:wrap;align-items:flex-start;background:#f3f6fb;border-radius:8px;padding:12px}
.query img.shown{width:320px;height:auto;image-rendering:pixelated;background:#fafafa}
.query dl{display:grid;grid-template-columns:max-content auto;gap:4px 12px;margin:0;font-size:.95em}
.query dt{font-weight:600;color:#444} .query dd{margin:0}
.rule{background:#f4f4f4;padding:10px 14px;border-radius:6px;margin:12px 0}
.rule .plain{font-size:1em;margin:0 0 6px}
.verdicts{font-size:.85em;margin:6px 0 0;padding-left:18px}
.warnings{color:#8a3d00;background:#fff6e8;border-radius:6px;padding:8px 8px 8px 28px}
.answer{border:1px solid #ddd;border-radius:8px;padding:12px;margin:14px 0}
.answer-head{display:flex;gap:18px;flex-wrap:wrap;align-items:flex-start}
.pair{display:flex;align-items:center;gap:10px}
.pair figure{margin:0;text-align:center;font-size:.8em;max-width:170px;overflow-wrap:anywhere}
.pair img{width:160px;height:160px;object-fit:contain;background:#fafafa;display:block;image-rendering:pixelated}
.arrow{font-size:1.6em;color:#888}
.texts{display:flex;flex-direction:column;gap:4px;font-size:1.05em;min-width:320px}
.texts .label{font-size:.75em;color:#666;text-transform:uppercase;letter-spacing:.05em}
.texts del{background:#fde2e2;color:#8b0000;text-decoration:line-through}
.texts mark,.texts ins{background:#d8f5d0;color:#064d00;text-decoration:none;font-weight:700;outline:2px solid #2c7a1f;border-radius:2px}
.facts{flex:1;min-width:280px}
.numbers{font-size:1.05em;margin:4px 0}
.numbers .up{color:#0a7a2f} .numbers .down{color:#b00020}
.verdict{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:700;font-size:.85em}
.verdict.verified{background:#d9f2df;color:#0a5a22} .verdict.weak{background:#fff0c2;color:#7a5200}
.verdict.unverifiable,.verdict.unverified{background:#eee;color:#555}
.why{font-size:.9em;color:#333;margin:4px 0}
.caption{font-style:italic;color:#444}
.probs{display:grid;grid-template-columns:max-content 180px max-content;gap:3px 8px;align-items:center;font-size:.85em;margin:6px 0}
.probs .bar{background:#e6e6e6;height:12px;border-radius:2px;overflow:hidden}
.probs .fill{background:#6b8fd6;height:100%}
.probs .target .fill{background:#2c7a1f} .probs .target{font-weight:700}
.maps{margin-top:10px}
details{margin:14px 0} summary{cursor:pointer;font-weight:600}
.baseline-list{display:flex;flex-wrap:wrap;gap:12px}
.baseline{border:1px dashed #ccc;border-radius:8px;padding:8px;font-size:.85em;width:190px}
.baseline img{width:160px;height:160px;object-fit:contain;display:block;image-rendering:pixelated}
table{border-collapse:collapse;font-size:.85em} td,th{padding:3px 8px;border-bottom:1px solid #eee;text-align:left}
"""
    + FIGURE_CSS
)


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


def _q(text: Any) -> str:
    """A quoted, escaped text."""
    return f"\u201c{html.escape(str(text))}\u201d"


def _num(value: Any, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "\u2013"


def _digits(result: Mapping[str, Any]) -> int:
    return 3 if result.get("mode") == "flip" else 2


def verdict_of(item: Mapping[str, Any]) -> str:
    """The item's verdict (``verdict``, else its ``verified`` flag)."""
    verdict = item.get("verdict")
    if isinstance(verdict, str):
        return verdict
    return "verified" if item.get("verified") else "unverified"


def goal_sentence(result: Mapping[str, Any], query_name: str | None) -> str:
    """The question of the query in one sentence (plain text)."""
    original = f"{query_name}" if query_name else "the original image"
    text = result.get("text") or ""
    validity = result.get("validity", {})
    if result.get("mode") == "flip":
        return f"Images close to {original} that the model labels \u201c{validity.get('target', '')}\u201d instead"
    more = "more" if result.get("mode") == "increase" else "less"
    if result.get("side") == "text":
        return f"Captions close to \u201c{text}\u201d that the model finds {more} like {original}"
    return f"Images close to {original} that the model finds {more} like \u201c{text}\u201d"


def rule_in_words(result: Mapping[str, Any]) -> str:
    """The validity rule with the numbers it compares against, in plain words (HTML)."""
    validity = result.get("validity", {})
    mode, side = result.get("mode"), result.get("side")
    threshold, best, typical = validity.get("threshold"), validity.get("best"), validity.get("typical")
    original = validity.get("original")
    if mode == "flip":
        return (
            f"An answer counts when the model labels it {_q(validity.get('target', ''))}: that label must "
            f"become the most probable of the {len(result.get('query', {}).get('labels', []))} labels. "
            f"The original is labelled {_q(result.get('query', {}).get('predicted', '?'))}, with "
            f"p({_q(validity.get('target', ''))}) = {_num(original, 3)}."
        )
    what = "caption" if side == "text" else "image"
    against = "with the image" if side == "text" else f"for {_q(result.get('text', ''))}"
    user = "user threshold" in str(validity.get("rule", ""))
    if mode == "decrease":
        need = f"at most <b>{_num(threshold)}</b>" + (" (your threshold)" if user else "")
        relation = "less than the original"
    else:
        need = f"at least <b>{_num(threshold)}</b>" + (" (your threshold)" if user else "")
        relation = "more than the original"
    sentence = f"An answer counts when it scores {need} {against} and {relation} ({_num(original)})."
    context = []
    if best is not None:
        context.append(f"the best {what} in the index scores {_num(best)}")
    if typical is not None:
        context.append(f"a typical one {_num(typical)}")
    if original is not None:
        context.append(f"the original {_num(original)}")
    return sentence + (" For comparison: " + "; ".join(context) + "." if context else "")


def item_rule(item: Mapping[str, Any], result: Mapping[str, Any]) -> str:
    """Why this answer counts, with its own numbers (HTML): "scores 15.0 for 'x' (needs >= 13.4); ..."."""
    validity = result.get("validity", {})
    if result.get("mode") == "flip":
        probabilities = item.get("probabilities") or {}
        target = validity.get("target", "")
        top = max(probabilities, key=probabilities.get) if probabilities else None
        return (
            f"labelled {_q(top)} with p({_q(target)}) = {_num(probabilities.get(target), 3)}; "
            f"the original {_num(validity.get('original'), 3)}"
            if top
            else ""
        )
    against = "with the image" if result.get("side") == "text" else f"for {_q(result.get('text', ''))}"
    sign = "\u2264" if result.get("mode") == "decrease" else "\u2265"
    what = "caption" if result.get("side") == "text" else "image"
    parts = [
        f"scores {_num(item.get('score_after'))} {against} (needs {sign} {_num(validity.get('threshold'))})"
    ]
    if validity.get("best") is not None:
        parts.append(f"the best {what} in the index scores {_num(validity.get('best'))}")
    parts.append(f"the original {_num(item.get('score_before'))}")
    if item.get("p_match") is not None:
        parts.append(f"p(match) {_num(item.get('p_match'))}")
    return "; ".join(parts)


def _numbers(item: Mapping[str, Any], result: Mapping[str, Any]) -> str:
    digits = _digits(result)
    name = (
        f"p({_q(result.get('validity', {}).get('target', 'target'))})"
        if result.get("mode") == "flip"
        else "score"
    )
    before, after = item.get("score_before"), item.get("score_after")
    delta = (after or 0.0) - (before or 0.0)
    arrow = "up" if delta >= 0 else "down"
    return (
        f'<div class="numbers">{name} {_num(before, digits)} &rarr; <b>{_num(after, digits)}</b> '
        f'<span class="{arrow}">({delta:+.{digits}f})</span></div>'
    )


def _badge(item: Mapping[str, Any]) -> str:
    verdict = verdict_of(item)
    kind = "caption" if item.get("kind") == "caption" else "image"
    words = VERDICT_WORDS.get(verdict, {}).get(kind, "")
    return f'<span class="verdict {verdict}" title="{html.escape(words)}">{verdict}</span>'


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


def _image_figure(src: str | None, caption: str, alt: str) -> str:
    image = (
        f'<img src="{src}" alt="{html.escape(alt)}">' if src else '<div class="muted">(file missing)</div>'
    )
    return f"<figure>{image}<figcaption>{caption}</figcaption></figure>"


def _captions_line(captions: Sequence[str]) -> str:
    return f'<div class="caption">{_q(captions[0])}</div>' if captions else ""


def _answer(
    item: Mapping[str, Any],
    result: Mapping[str, Any],
    root: Path,
    query_uri: str | None,
    maps: Sequence[Tile | TokenRow],
    captions: Mapping[int, Sequence[str]],
    query_captions: Sequence[str],
) -> str:
    digits = _digits(result)
    verdict = verdict_of(item)
    kind = "caption" if item.get("kind") == "caption" else "image"
    if kind == "image":
        uri = _thumb_for(root / item["path"]) if item.get("path") else None
        answer_captions = captions.get(int(item["id"]), [])
        left = (
            '<div class="pair">'
            + _image_figure(
                query_uri,
                f"the original<br><b>{_num(item.get('score_before'), digits)}</b>"
                + (f"<br>{_captions_line(query_captions)}" if query_captions else ""),
                "the original",
            )
            + '<span class="arrow" aria-hidden="true">&rarr;</span>'
            + _image_figure(
                uri,
                f"{html.escape(item.get('path') or '')}<br><b>{_num(item.get('score_after'), digits)}</b>"
                + (f"<br>{_captions_line(answer_captions)}" if answer_captions else ""),
                item.get("path") or "",
            )
            + "</div>"
        )
    else:
        original = str(result.get("text") or "")
        answer = str(item.get("text") or "")
        removed, added = changed_words(original, answer)
        left = (
            '<div class="texts">'
            f'<span class="label">the original text</span><span class="was">{marked_html(original, removed, "del")}</span>'
            f'<span class="label">the answer</span><span class="now">{marked_html(answer, added, "mark")}</span>'
            "</div>"
        )
    facts = [
        f'<div>{_badge(item)} <span class="muted">#{item.get("rank")} &middot; distance to the original '
        f"{_num(item.get('distance'), 3)}"
        + (f" &middot; {item['word_edits']} word(s) changed" if item.get("word_edits") is not None else "")
        + "</span></div>",
        _numbers(item, result),
        f'<div class="why"><b>why it counts:</b> {item_rule(item, result)}</div>',
        f'<div class="why muted">{html.escape(verdict)}: {html.escape(VERDICT_WORDS.get(verdict, {}).get(kind, ""))}</div>',
    ]
    if result.get("mode") == "flip" and item.get("probabilities"):
        facts.append(probability_bars(item["probabilities"], result.get("validity", {}).get("target")))
    body = [
        f'<div class="answer" data-id="{int(item["id"])}" data-verdict="{verdict}">',
        f'<div class="answer-head">{left}<div class="facts">{"".join(facts)}</div></div>',
    ]
    if maps:
        body.append('<div class="maps cc-tiles">' + "".join(_map_html(m) for m in maps) + "</div>")
    body.append("</div>")
    return "".join(body)


def _map_html(shown: Tile | TokenRow) -> str:
    return tokens_html(shown) if isinstance(shown, TokenRow) else tile_html(shown)


def _baselines(result: Mapping[str, Any], root: Path, answered: Mapping[int, int], digits: int) -> str:
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
            item_id = int(item["id"])
            shown = html.escape(item.get("path") or item.get("text") or f"#{item_id}")
            numbers = f"score {_num(item.get('score_before'), digits)} &rarr; <b>{_num(item.get('score_after'), digits)}</b>"
            if item_id in answered:
                cards.append(
                    f'<div class="baseline" data-id="{item_id}">{shown}<br>{numbers}<br>'
                    f"<i>the same as answer #{answered[item_id]}</i></div>"
                )
            elif item_id in seen:
                cards.append(
                    f'<div class="baseline" data-id="{item_id}">{shown}<br>{numbers}<br>'
                    f"<i>the same as the {seen[item_id]} above</i></div>"
                )
            else:
                picture = ""
                if item.get("kind") == "image" and item.get("path"):
                    uri = _thumb_for(root / item["path"])
                    picture = f'<img src="{uri}" alt="{shown}">' if uri else ""
                elif item.get("text"):
                    shown = _q(item["text"])
                cards.append(
                    f'<div class="baseline" data-id="{item_id}">{picture}{shown}<br>{numbers}<br>{_badge(item)}</div>'
                )
            seen.setdefault(item_id, label)
        sections.append(
            f"<h3>{html.escape(label)}</h3><p class='muted'>{html.escape(BASELINE_WORDS.get(key, ''))}</p>"
            + (
                f'<div class="baseline-list">{"".join(cards)}</div>'
                if cards
                else "<p class='muted'>none valid</p>"
            )
        )
    return (
        '<details class="baselines"><summary>Baselines, for comparison (shown once each)</summary>'
        + "".join(sections)
        + "</details>"
    )


def counterfactual_report(
    result: Mapping[str, Any],
    root: str | Path,
    query_image: Image.Image | None = None,
    maps: Mapping[int, Sequence[Tile | TokenRow]] | None = None,
    query_maps: Sequence[Tile] | None = None,
    title: str | None = None,
    captions: Mapping[int, Sequence[str]] | None = None,
    query_captions: Sequence[str] = (),
    query_probabilities: Mapping[str, float] | None = None,
    item_probabilities: Mapping[int, Mapping[str, float]] | None = None,
) -> str:
    """Render one counterfactual result (its ``to_dict()``) as a self-contained HTML page.

    Args:
        result: ``CounterfactualResult.to_dict()``.
        root: the index's image folder (item paths are relative to it).
        query_image: the query image, shown at the top.
        maps: per item id, its map tiles and word rows (`counterclip.report.counterfactual.counterfactual_maps`).
        query_maps: the query pair's map tiles.
        title: the page title. Default: the question in one sentence.
        captions: per image id, the captions the index holds for it (shown under the pictures).
        query_captions: the captions of the query image.
        query_probabilities: flip mode: the original's probability per label (labelled bars).
        item_probabilities: flip mode: per answer id, its probability per label (when the result's items
            do not carry ``probabilities``).

    Returns:
        HTML text.
    """
    root = Path(root)
    maps = maps or {}
    captions = captions or {}
    query = result.get("query", {})
    described = query.get("image") if isinstance(query.get("image"), Mapping) else {}
    query_name = described.get("path") or described.get("name")
    if query_name is None and described.get("id") is not None:
        query_name = f"image #{described['id']}"
    heading = title or goal_sentence(result, Path(str(query_name)).name if query_name else None)
    items = result.get("items", [])
    digits = _digits(result)
    validity = result.get("validity", {})
    query_uri = image_data_uri(query_image) if query_image is not None else None

    body = [f"<h1>{html.escape(heading)}</h1>"]
    body.append(
        f'<p class="muted">{html.escape(str(result.get("side", "")))} side &middot; mode '
        f"{html.escape(str(result.get('mode', '')))} &middot; {result.get('candidates', 0)} candidates re-scored</p>"
    )
    rows = []
    if query_name:
        rows.append(f"<dt>file</dt><dd>{html.escape(str(query_name))}</dd>")
    if result.get("text"):
        rows.append(f"<dt>text</dt><dd>{_q(result['text'])}</dd>")
    if result.get("mode") == "flip":
        rows.append(f"<dt>labels</dt><dd>{', '.join(_q(label) for label in query.get('labels', []))}</dd>")
        rows.append(f"<dt>predicted</dt><dd>{_q(query.get('predicted', ''))}</dd>")
        rows.append(f"<dt>target</dt><dd>{_q(validity.get('target', ''))}</dd>")
    if validity.get("original") is not None:
        name = f"p({_q(validity.get('target'))})" if result.get("mode") == "flip" else "score"
        rows.append(f"<dt>the original's {name}</dt><dd><b>{_num(validity['original'], digits)}</b></dd>")
    if query_captions:
        rows.append(f"<dt>its captions</dt><dd>{'<br>'.join(_q(c) for c in query_captions[:3])}</dd>")
    head = ['<section class="query">']
    if query_uri is not None:
        head.append(
            f'<figure style="margin:0"><img class="shown" src="{image_data_uri(query_image, 320)}" '
            f'alt="the query image"><figcaption class="muted">the query image</figcaption></figure>'
        )
    head.append(f"<div><dl>{''.join(rows)}</dl>")
    if query_probabilities:
        head.append(probability_bars(query_probabilities, validity.get("target")))
    head.append("</div>")
    if query_maps:
        head.append('<div class="cc-tiles">' + "".join(tile_html(t) for t in query_maps) + "</div>")
    head.append("</section>")
    body.append("".join(head))

    calibration = result.get("calibration")
    verdict_list = "".join(
        f'<li><span class="verdict {name}">{name}</span> {html.escape(words["image" if result.get("side") != "text" else "caption"])}</li>'
        for name, words in VERDICT_WORDS.items()
        if name != "unverified"
    )
    body.append(
        '<section class="rule">'
        f'<p class="plain">{rule_in_words(result)}</p>'
        + (
            f'<p class="calibration">Verdicts by the <b>{html.escape(str(calibration))}</b>.</p>'
            if calibration
            else '<p class="calibration">No calibration holds for this model and index: no answer can be verified.</p>'
        )
        + f'<ul class="verdicts">{verdict_list}</ul>'
        + f"<details><summary>The rule as the engine states it</summary><code>{html.escape(str(validity.get('rule', '')))}</code></details>"
        + "</section>"
    )
    warnings = result.get("warnings") or []
    if warnings:
        body.append(
            '<ul class="warnings">' + "".join(f"<li>{html.escape(str(w))}</li>" for w in warnings) + "</ul>"
        )
    noun = "caption" if result.get("side") == "text" else "image"
    body.append(
        f"<h2>{len(items)} answer{'s' if len(items) != 1 else ''} ({noun}s), closest to the original first</h2>"
        if items
        else f"<h2>No {noun} in this index passes the rule for this query</h2>"
    )
    answered = {int(i["id"]): i.get("rank") for i in items}
    for item in items:
        if not item.get("probabilities") and item_probabilities and int(item["id"]) in item_probabilities:
            item = {**item, "probabilities": dict(item_probabilities[int(item["id"])])}
        body.append(
            _answer(item, result, root, query_uri, maps.get(int(item["id"]), []), captions, query_captions)
        )
    body.append(_baselines(result, root, answered, digits))
    if result.get("stale"):
        rows = "".join(
            f"<tr><td>{html.escape(str(s.get('path') or s.get('text')))}</td><td>{html.escape(str(s.get('reason')))}</td></tr>"
            for s in result["stale"]
        )
        body.append(
            f"<h2>Stale index entries (not returned)</h2><table>{rows}</table>"
            "<p>Run <code>counterclip update</code>.</p>"
        )
    timings = result.get("timings", {})
    if timings:
        body.append(
            "<details><summary>Timings</summary><table>"
            + "".join(
                f"<tr><th>{html.escape(k)}</th><td>{v * 1000:.1f} ms</td></tr>" for k, v in timings.items()
            )
            + "</table></details>"
        )
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(heading)}</title>"
        f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>"
    )


# write_text_atomic lives in counterclip.report.files; it stays importable from here for older callers.
__all__ = ["counterfactual_report", "image_data_uri", "write_text_atomic"]
