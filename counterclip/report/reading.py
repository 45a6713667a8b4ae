"""How a counterfactual result reads, in the words every output shares (the report, the web page through
the HTTP service, the CLI): the original's own reading first, the order of the answers, what was left out
as the query again, what each number means, and map titles that say what a map shows.

Plain functions of ``CounterfactualResult.to_dict()`` and its items, returning plain text (the callers
escape it); the number words come from `counterclip.scores.number_words`, one vocabulary for all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from counterclip.scores import PairScore, number_words


def _quoted(text: Any) -> str:
    return f"\u201c{text}\u201d"


def _fixed(value: Any, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "\u2013"


def sentence(text: str) -> str:
    """The text with its first letter capitalised (the engine's sentences start in lower case)."""
    return text[:1].upper() + text[1:] if text else text


def settled(result: Mapping[str, Any]) -> str | None:
    """The original already is past the verified line for the goal, in words (None when it is not)."""
    words = (result.get("original") or {}).get("settled")
    return sentence(str(words)).rstrip(".") + "." if words else None


def flip_target(result: Mapping[str, Any]) -> str:
    """The label a flip result asks for (its validity's target, else the query's)."""
    return str(
        (result.get("validity") or {}).get("target") or (result.get("query") or {}).get("target") or ""
    )


def target_note(result: Mapping[str, Any]) -> str | None:
    """Flip without a target given: which label was chosen and why (None when the user named it)."""
    query = result.get("query") or {}
    if result.get("mode") != "flip" or not query.get("target_chosen"):
        return None
    return (
        f"No target label was given: the target is {_quoted(flip_target(result))}, the most likely label "
        f"other than the predicted {_quoted(query.get('predicted', '?'))}."
    )


def original_numbers(result: Mapping[str, Any]) -> str:
    """The original pair's numbers, each named: "scores 7.24 for 'x'; p(match) 0.01" (flip: the class
    probability of the target over the labels, and the p(match) of the target's text)."""
    original = result.get("original") or {}
    if result.get("mode") == "flip":
        target = _quoted(flip_target(result))
        labels = len((result.get("query") or {}).get("labels") or [])
        words = (
            f"class probability of {target} {_fixed(original.get('class_probability'), 3)} "
            f"(over the {labels} labels)"
        )
        if original.get("p_match") is not None:
            words += (
                f"; p(match) of {target} {_fixed(original.get('p_match'))} (the image and the label's text)"
            )
        return words
    against = "with the image" if result.get("side") == "text" else f"for {_quoted(result.get('text', ''))}"
    score = original.get("score", (result.get("validity") or {}).get("original"))
    words = f"scores {_fixed(score)} {against}"
    if original.get("p_match") is not None:
        words += f"; p(match) {_fixed(original.get('p_match'))}"
    return words


def original_sentence(result: Mapping[str, Any]) -> str:
    """ "The original scores 7.24 for 'x'; p(match) 0.01." (`original_numbers` as a sentence)."""
    joiner = "The original: " if result.get("mode") == "flip" else "The original "
    return joiner + original_numbers(result) + "."


def original_reading(result: Mapping[str, Any]) -> str:
    """The original pair as the model reads it: the settled sentence first (when the goal is reached
    already), then its numbers, each named."""
    first = [settled(result)] if settled(result) else []
    return " ".join([*first, original_sentence(result)])


def other_warnings(result: Mapping[str, Any]) -> list[str]:
    """The result's warnings less the settled sentence (said first, on its own)."""
    words = ((result.get("original") or {}).get("settled") or "").strip().lower()
    return [str(w) for w in result.get("warnings") or [] if str(w).strip().lower() != words]


def answers_heading(result: Mapping[str, Any], count: int) -> str:
    """ "3 answers (images), by distance to the original, then variety": the count and the real order."""
    noun = "caption" if result.get("side") == "text" else "image"
    if not count:
        return f"No {noun} in this index passes the rule for this query"
    order = str(result.get("order") or "by distance to the original")
    return f"{count} answer{'s' if count != 1 else ''} ({noun}s), {order}"


def left_out_words(result: Mapping[str, Any]) -> str | None:
    """What was dropped as the query again, counted by why ("Left out as the original again: a copy of
    the query's file (1)"); None when nothing was."""
    left_out = result.get("left_out") or {}
    if not left_out:
        return None
    counted = ", ".join(f"{why} ({n})" for why, n in left_out.items())
    return f"Left out as the original again: {counted}."


def verdict_reason(item: Mapping[str, Any]) -> str | None:
    """Why an answer is not verified, as the engine says it (None for a verified one)."""
    reason = item.get("reason")
    return str(reason) if reason else None


def result_numbers(result: Mapping[str, Any], score: PairScore | None = None) -> dict[str, str]:
    """What each number of a counterfactual result means (`counterclip.scores.number_words`)."""
    return number_words(score, "image-text", flip=result.get("mode") == "flip")


def pair_map_title(text: str | None, p_match: float | None, subject: str = "it") -> str:
    """A pair map's title by what it shows: "why it matches 'x'" only when the pair matches (p(match)
    at least 0.5); else the parts that count toward the text, saying it does not match. Without
    ``text`` the title says "the text" (a caption beside the map names it)."""
    shown = _quoted(text) if text else "the text"
    if p_match is not None and p_match >= 0.5:
        return f"why {subject} matches" + (f" {shown}" if text else "")
    if p_match is not None:
        return f"what in {subject} counts toward {shown} (not a match)"
    return f"what in {subject} counts toward {shown}"
