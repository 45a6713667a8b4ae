"""The quality card in the HTML report: a compact table per answer (each quality's number, its reference,
one sentence; the question and the definition on hover) and a section with the answers' summary beside
the references. Reads ``CounterfactualResult.to_dict()["quality"]`` only; a result without it shows
nothing more."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from counterclip.quality import QUALITIES, QUESTIONS

QUALITY_CSS = """
.qcard{border-collapse:collapse;font-size:.8em;margin:8px 0;background:#fbfbfd}
.qcard caption{text-align:left;font-weight:600;font-size:1.05em;padding:2px 0 4px}
.qcard td,.qcard th{padding:2px 8px;border-bottom:1px solid #eee;vertical-align:top;text-align:left}
.qcard th{font-weight:600;white-space:nowrap;cursor:help;border-bottom:1px dotted #999}
.qcard .num{font-variant-numeric:tabular-nums;white-space:nowrap;text-align:right}
.qcard .better{color:#0a7a2f;font-weight:700} .qcard .worse{color:#8a3d00}
.qcards{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.qcost{font-size:.8em;color:#666}
"""


def _number(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.2f}"


def card_html(card: Mapping[str, Any], caption: str | None = None) -> str:
    """One card as a small table: quality (hover: its question and definition), value, reference, sentence."""
    rows = []
    for name in QUALITIES:
        measure = card.get(name) or {}
        beats = measure.get("beats_reference")
        tied = measure.get("value") is not None and measure.get("value") == measure.get("reference")
        css = "better" if beats else ("worse" if beats is False and not tied else "")
        hover = f"{name}: {QUESTIONS[name]} {measure.get('definition', '')}".strip()
        direction = "higher is better" if measure.get("higher_is_better", True) else "lower is better"
        reference = (
            f"{html.escape(str(measure.get('reference_name')))} {_number(measure.get('reference'))}"
            if measure.get("reference") is not None
            else ""
        )
        rows.append(
            f'<tr><th title="{html.escape(hover)} ({direction})">{name}</th>'
            f'<td class="num {css}">{_number(measure.get("value"))}</td><td class="num">{reference}</td>'
            f"<td>{html.escape(str(measure.get('sentence', '')))}</td></tr>"
        )
    title = html.escape(caption or str(card.get("subject", "")))
    return f'<table class="qcard"><caption>{title}</caption>{"".join(rows)}</table>'


def answer_cards_html(result: Mapping[str, Any], count: int) -> list[str]:
    """The card of each of the first ``count`` answers ("" where the result has none)."""
    answers = (result.get("quality") or {}).get("answers") or []
    return [card_html(answers[n], "quality of this answer") if n < len(answers) else "" for n in range(count)]


def quality_section(result: Mapping[str, Any]) -> str:
    """The answers' summary card beside the references' cards, and what the cards cost."""
    quality = result.get("quality")
    if not quality:
        return ""
    cards = [card_html(quality["summary"], f"all answers: {quality['summary'].get('subject', '')}")]
    cards += [card_html(card) for card in (quality.get("references") or {}).values()]
    cost = (
        f"{quality.get('forward_passes', 0)} extra forward passes, {float(quality.get('seconds', 0.0)):.2f} s; "
        f"stability under: {', '.join(quality.get('perturbations') or []) or 'no perturbation'}. "
        "Hover a quality for its definition."
    )
    return (
        f'<h2>Quality of the answers</h2><div class="qcards">{"".join(cards)}</div>'
        f'<p class="qcost">{html.escape(cost)}</p>'
    )
