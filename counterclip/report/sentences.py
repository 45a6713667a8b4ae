"""What a counterfactual result says, in words: the question in one sentence, the rule an answer had to
pass with the numbers it compares against, why one answer counts, and what each verdict means.

Plain functions of ``CounterfactualResult.to_dict()`` and its items; `counterclip.report.html` lays them
out on the page (and the web page's service reads `rule_in_words` too).
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

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
    "nearest_unlike_neighbour": "the item nearest the original that the model decides about differently "
    "(for increase: p(match) at least 0.5), found without the target path or the verified line",
    "first_valid_text_match": "the first valid item found by the text alone, ignoring the original",
    "closest_valid_in_top": "the valid item closest to the original among the text's top matches",
}


def quoted(text: Any) -> str:
    """A quoted, escaped text."""
    return f"\u201c{html.escape(str(text))}\u201d"


def number(value: Any, digits: int = 2) -> str:
    """``value`` with ``digits`` decimals, or a dash when it is not a number."""
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "\u2013"


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
            f"An answer counts when the model labels it {quoted(validity.get('target', ''))}: that label must "
            f"become the most probable of the {len(result.get('query', {}).get('labels', []))} labels. "
            f"The original is labelled {quoted(result.get('query', {}).get('predicted', '?'))}, with "
            f"class probability of {quoted(validity.get('target', ''))} = {number(original, 3)}."
        )
    what = "caption" if side == "text" else "image"
    against = "with the image" if side == "text" else f"for {quoted(result.get('text', ''))}"
    user = "user threshold" in str(validity.get("rule", ""))
    if mode == "decrease":
        need = f"at most <b>{number(threshold)}</b>" + (" (your threshold)" if user else "")
        relation = "less than the original"
    else:
        need = f"at least <b>{number(threshold)}</b>" + (" (your threshold)" if user else "")
        relation = "more than the original"
    sentence = f"An answer counts when it scores {need} {against} and {relation} ({number(original)})."
    context = []
    if best is not None:
        context.append(f"the best {what} in the index scores {number(best)}")
    if typical is not None:
        context.append(f"a typical one {number(typical)}")
    if original is not None:
        context.append(f"the original {number(original)}")
    return sentence + (" For comparison: " + "; ".join(context) + "." if context else "")


def item_rule(item: Mapping[str, Any], result: Mapping[str, Any]) -> str:
    """Why this answer counts, with its own numbers (HTML): "scores 15.0 for 'x' (needs >= 13.4); ..."."""
    validity = result.get("validity", {})
    if result.get("mode") == "flip":
        probabilities = item.get("probabilities") or {}
        target = validity.get("target", "")
        top = max(probabilities, key=probabilities.get) if probabilities else None
        if not top:
            return ""
        matched = (
            f"; p(match) of {quoted(target)} {number(item.get('p_match'))}"
            if item.get("p_match") is not None
            else ""
        )
        return (
            f"labelled {quoted(top)} with class probability of {quoted(target)} "
            f"{number(probabilities.get(target), 3)}; the original {number(validity.get('original'), 3)}"
            + matched
        )
    against = "with the image" if result.get("side") == "text" else f"for {quoted(result.get('text', ''))}"
    sign = "\u2264" if result.get("mode") == "decrease" else "\u2265"
    what = "caption" if result.get("side") == "text" else "image"
    parts = [
        f"scores {number(item.get('score_after'))} {against} (needs {sign} {number(validity.get('threshold'))})"
    ]
    if validity.get("best") is not None:
        parts.append(f"the best {what} in the index scores {number(validity.get('best'))}")
    parts.append(f"the original {number(item.get('score_before'))}")
    if item.get("p_match") is not None:
        parts.append(f"p(match) {number(item.get('p_match'))}")
    return "; ".join(parts)
