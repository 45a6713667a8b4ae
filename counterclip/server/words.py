"""The words the page shows beside an answer's numbers: the same sentences as the report and the CLI
(`counterclip.report.reading`, `counterclip.scores.number_words`), added to the API's answers so the page
never words a number its own way.
"""

from __future__ import annotations

from typing import Any

from counterclip.report.reading import (
    answers_heading,
    left_out_words,
    original_reading,
    result_numbers,
    settled,
    target_note,
)
from counterclip.report.sentences import BASELINE_WORDS
from counterclip.scores import number_words, pair_kind


def search_numbers(engine: Any, by_text: bool, collection: str) -> dict[str, str]:
    """``{name: meaning}`` of a search's numbers (its score named for its kind of pair, with its range)."""
    words = number_words(getattr(engine, "pair_score", None), pair_kind(by_text, collection))
    words.pop("distance", None)  # a search card shows no distance
    return words


def result_words(engine: Any, result: dict[str, Any]) -> dict[str, Any]:
    """What the page says about a counterfactual result (its ``to_dict()``): ``numbers`` (each number's
    meaning and range), ``reading`` (the original's reading, settled first; the heading with the real
    order; what was left out; flip's chosen target) and ``baseline_words`` (what each baseline is)."""
    return {
        "numbers": result_numbers(result, getattr(engine, "pair_score", None)),
        "reading": {
            "settled": settled(result),
            "original": original_reading(result),
            "heading": answers_heading(result, len(result.get("items") or [])),
            "left_out": left_out_words(result),
            "target_note": target_note(result),
        },
        "baseline_words": dict(BASELINE_WORDS),
    }
