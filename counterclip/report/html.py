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

from PIL import Image

from counterclip.explainers.figure import FIGURE_CSS, Tile, TokenRow, tile_html
from counterclip.report.answers import (  # noqa: F401 - re-exported
    THUMB,
    answer_html,
    baselines_html,
    digits_of,
    image_data_uri,
    probability_bars,
)
from counterclip.report.files import write_text_atomic
from counterclip.report.quality import QUALITY_CSS, answer_cards_html, quality_section
from counterclip.report.reading import (
    answers_heading,
    left_out_words,
    original_sentence,
    other_warnings,
    result_numbers,
    settled,
    target_note,
)
from counterclip.report.sentences import (  # noqa: F401 - re-exported
    BASELINE_WORDS,
    VERDICT_WORDS,
    goal_sentence,
    item_rule,
    number,
    quoted,
    rule_in_words,
    verdict_of,
)
from counterclip.scores import PairScore

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
.settled{background:#eef3fb;border-left:4px solid #2457c5;padding:10px 14px;border-radius:6px;font-weight:600}
.reading{margin:8px 0 0;font-size:.95em} .reason{color:#7a5200}
.numbers-legend dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px;margin:6px 0 0;font-size:.85em}
.numbers-legend dt{font-weight:600} .numbers-legend dd{margin:0}
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
    score: PairScore | None = None,
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
        score: the model's pair score, so the legend of the numbers names its scale and range.

    Returns:
        HTML text.
    """
    root = Path(root)
    query_name = _query_name(result)
    heading = title or goal_sentence(result, Path(str(query_name)).name if query_name else None)
    query_uri = image_data_uri(query_image) if query_image is not None else None
    items = [_with_probabilities(item, item_probabilities) for item in result.get("items", [])]
    answers = _answers(result, items, root, query_uri, maps or {}, captions or {}, query_captions)
    body = [
        f"<h1>{html.escape(heading)}</h1>",
        _subtitle(result),
        _query_section(result, query_name, query_image, query_captions, query_probabilities, query_maps),
        _settled_section(result),
        _rule_section(result, score),
        _warnings(result),
        _answers_heading(result, items),
        *answers,
        quality_section(result),
        baselines_html(result, root, {int(i["id"]): i.get("rank") for i in items}, digits_of(result)),
        _stale_section(result),
        _timings_section(result),
    ]
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(heading)}</title>"
        f"<style>{_CSS}{QUALITY_CSS if result.get('quality') else ''}</style></head><body>{''.join(body)}"
        "</body></html>"
    )


def _answers(
    result: Mapping[str, Any],
    items: list[Mapping[str, Any]],
    root: Path,
    query_uri: str | None,
    maps: Mapping[int, Sequence[Tile | TokenRow]],
    captions: Mapping[int, Sequence[str]],
    query_captions: Sequence[str],
) -> list[str]:
    """Each answer's card, with its maps, captions and (when asked for) its quality card."""
    cards = answer_cards_html(result, len(items))
    return [
        answer_html(
            item, result, root, query_uri, maps.get(int(item["id"]), []), captions, query_captions, card
        )
        for item, card in zip(items, cards, strict=True)
    ]


def _subtitle(result: Mapping[str, Any]) -> str:
    """The side, the mode and how many candidates were re-scored, in one muted line."""
    return (
        f'<p class="muted">{html.escape(str(result.get("side", "")))} side &middot; mode '
        f"{html.escape(str(result.get('mode', '')))} &middot; {result.get('candidates', 0)} candidates re-scored</p>"
    )


def _query_name(result: Mapping[str, Any]) -> str | None:
    """How the query image is named: its path or name, else its id in the index, else None."""
    query = result.get("query", {})
    described = query.get("image") if isinstance(query.get("image"), Mapping) else {}
    query_name = described.get("path") or described.get("name")
    if query_name is None and described.get("id") is not None:
        query_name = f"image #{described['id']}"
    return query_name


def _with_probabilities(
    item: Mapping[str, Any], item_probabilities: Mapping[int, Mapping[str, float]] | None
) -> Mapping[str, Any]:
    """The item, with its labels' probabilities from ``item_probabilities`` when it carries none."""
    if not item.get("probabilities") and item_probabilities and int(item["id"]) in item_probabilities:
        return {**item, "probabilities": dict(item_probabilities[int(item["id"])])}
    return item


def _query_section(
    result: Mapping[str, Any],
    query_name: str | None,
    query_image: Image.Image | None,
    query_captions: Sequence[str],
    query_probabilities: Mapping[str, float] | None,
    query_maps: Sequence[Tile] | None,
) -> str:
    """The query: its image, its facts (file, text, labels, the original's score, captions), the labels'
    probabilities in flip mode, and the query pair's maps."""
    validity = result.get("validity", {})
    head = ['<section class="query">']
    if query_image is not None:
        head.append(
            f'<figure style="margin:0"><img class="shown" src="{image_data_uri(query_image, 320)}" '
            f'alt="the query image"><figcaption class="muted">the query image</figcaption></figure>'
        )
    head.append(f"<div><dl>{''.join(_query_facts(result, query_name, query_captions))}</dl>")
    head.append(f'<p class="reading">{html.escape(original_sentence(result))}</p>')
    note = target_note(result)
    if note:
        head.append(f'<p class="muted target-note">{html.escape(note)}</p>')
    if query_probabilities:
        head.append(probability_bars(query_probabilities, validity.get("target")))
    head.append("</div>")
    if query_maps:
        head.append('<div class="cc-tiles">' + "".join(tile_html(t) for t in query_maps) + "</div>")
    head.append("</section>")
    return "".join(head)


def _query_facts(
    result: Mapping[str, Any], query_name: str | None, query_captions: Sequence[str]
) -> list[str]:
    """The query's facts as ``<dt>``/``<dd>`` rows."""
    query, validity = result.get("query", {}), result.get("validity", {})
    rows = []
    if query_name:
        rows.append(f"<dt>file</dt><dd>{html.escape(str(query_name))}</dd>")
    if result.get("text"):
        rows.append(f"<dt>text</dt><dd>{quoted(result['text'])}</dd>")
    if result.get("mode") == "flip":
        rows.append(
            f"<dt>labels</dt><dd>{', '.join(quoted(label) for label in query.get('labels', []))}</dd>"
        )
        rows.append(f"<dt>predicted</dt><dd>{quoted(query.get('predicted', ''))}</dd>")
        rows.append(f"<dt>target</dt><dd>{quoted(validity.get('target', ''))}</dd>")
    if validity.get("original") is not None:
        name = (
            f"class probability of {quoted(validity.get('target'))}"
            if result.get("mode") == "flip"
            else "score"
        )
        rows.append(
            f"<dt>the original's {name}</dt><dd><b>{number(validity['original'], digits_of(result))}</b></dd>"
        )
    if query_captions:
        rows.append(f"<dt>its captions</dt><dd>{'<br>'.join(quoted(c) for c in query_captions[:3])}</dd>")
    return rows


def _settled_section(result: Mapping[str, Any]) -> str:
    """The original already is where the goal points (nothing to add, or to take away): said first."""
    words = settled(result)
    return f'<p class="settled">{html.escape(words)}</p>' if words else ""


def _numbers_legend(result: Mapping[str, Any], score: PairScore | None) -> str:
    """What each number means, with its range (`counterclip.scores.number_words`)."""
    rows = "".join(
        f"<dt>{html.escape(name)}</dt><dd>{html.escape(words)}</dd>"
        for name, words in result_numbers(result, score).items()
    )
    return (
        f'<details class="numbers-legend"><summary>How to read the numbers</summary><dl>{rows}</dl></details>'
    )


def _rule_section(result: Mapping[str, Any], score: PairScore | None = None) -> str:
    """The rule in plain words, the calibration behind the verdicts, what each verdict means, what each
    number means, and the rule as the engine states it."""
    calibration = result.get("calibration")
    verdict_list = "".join(
        f'<li><span class="verdict {name}">{name}</span> {html.escape(words["image" if result.get("side") != "text" else "caption"])}</li>'
        for name, words in VERDICT_WORDS.items()
        if name != "unverified"
    )
    return (
        '<section class="rule">'
        f'<p class="plain">{rule_in_words(result)}</p>'
        + (
            f'<p class="calibration">Verdicts by the <b>{html.escape(str(calibration))}</b>.</p>'
            if calibration
            else '<p class="calibration">No calibration holds for this model and index: no answer can be verified.</p>'
        )
        + f'<ul class="verdicts">{verdict_list}</ul>'
        + _numbers_legend(result, score)
        + f"<details><summary>The rule as the engine states it</summary><code>{html.escape(str(result.get('validity', {}).get('rule', '')))}</code></details>"
        + "</section>"
    )


def _warnings(result: Mapping[str, Any]) -> str:
    warnings = other_warnings(result)  # the settled sentence is said first, on its own
    if not warnings:
        return ""
    return '<ul class="warnings">' + "".join(f"<li>{html.escape(str(w))}</li>" for w in warnings) + "</ul>"


def _answers_heading(result: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> str:
    """The answers' count and their real order; what was left out as the original again."""
    left_out = left_out_words(result)
    return f"<h2>{html.escape(answers_heading(result, len(items)))}</h2>" + (
        f'<p class="muted left-out">{html.escape(left_out)}</p>' if left_out else ""
    )


def _stale_section(result: Mapping[str, Any]) -> str:
    """The stale index entries left out of the answers, and what to run."""
    if not result.get("stale"):
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(str(s.get('path') or s.get('text')))}</td><td>{html.escape(str(s.get('reason')))}</td></tr>"
        for s in result["stale"]
    )
    return (
        f"<h2>Stale index entries (not returned)</h2><table>{rows}</table>"
        "<p>Run <code>counterclip update</code>.</p>"
    )


def _timings_section(result: Mapping[str, Any]) -> str:
    timings = result.get("timings", {})
    if not timings:
        return ""
    return (
        "<details><summary>Timings</summary><table>"
        + "".join(f"<tr><th>{html.escape(k)}</th><td>{v * 1000:.1f} ms</td></tr>" for k, v in timings.items())
        + "</table></details>"
    )


# write_text_atomic lives in counterclip.report.files; it stays importable from here for older callers.
__all__ = ["counterfactual_report", "image_data_uri", "write_text_atomic"]
