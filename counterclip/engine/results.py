"""Result objects returned by the engine (and rendered by the CLI, the report and the HTTP service)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from counterclip.quality import QualityCard
from counterclip.scores import NUMBERS as SCORE_NUMBERS

#: What a returned item's verdict means.
VERDICTS: dict[str, str] = {
    "verified": "passes the rule, re-scored from its file or text, and the calibrated probability agrees "
    "(a match for increase and flip, no match for decrease)",
    "weak": "passes the rule relative to what the index holds, but the calibrated probability does not "
    "agree (or no calibration holds): the index holds nothing better, not necessarily a real match",
    "unverifiable": "no file to re-score it from",
}

#: The numbers an answer carries, named once for every place that shows them (CLI, report, web app, API);
#: defined beside the pair score (`counterclip.scores.number_words` says them for one result).
NUMBERS: dict[str, str] = SCORE_NUMBERS


@dataclass
class ResultItem:
    """One returned image or caption.

    ``score_before`` is the original's score for the query, ``score_after`` this item's score (re-computed
    from its file or text when ``verified``); ``distance`` is ``1 - cos`` to the original embedding;
    ``step`` is the index of the path point whose search first found the item (None for baselines/search).
    """

    id: int
    kind: str  # "image" | "caption"
    path: str | None = None  # image path relative to the index root
    text: str | None = None  # caption text
    score_before: float | None = None
    score_after: float = 0.0
    delta: float = 0.0
    distance: float = 0.0
    rank: int = 0
    verified: bool = False  # the verdict is "verified" (kept as a flag for filters)
    verdict: str | None = None  # counterfactuals: verified | weak | unverifiable (see VERDICTS)
    p_match: float | None = None  # calibrated probability that the item and the fixed side really match
    rival: str | None = None  # a caption of the index, one word from the text, that the model prefers
    p_itm: float | None = None  # --verify-with itm: the matching head's probability that the pair matches
    step: int | None = None
    probabilities: dict[str, float] | None = None  # flip mode: softmax over the labels
    word_edits: int | None = None  # text side: words changed from the original caption
    reason: str | None = None  # why the verdict is not "verified" (None when it is)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Validity:
    """The explicit rule a candidate had to pass (kept in every result so users see the threshold)."""

    mode: str  # increase | decrease | flip
    rule: str  # human-readable rule
    threshold: float | None  # increase: score >= threshold; decrease: score <= threshold; flip: None
    best: float | None = None  # best score the index holds for the fixed side of the pair
    typical: float | None = None  # median score over a sample of the index
    original: float | None = None  # the original pair's score (flip: target probability)
    target: str | None = None  # flip: the label the prediction must become

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CounterfactualQuality:
    """The quality cards of a counterfactual result (asked with ``quality=True``; see
    `counterclip.engine.quality` for the definitions)."""

    answers: tuple[QualityCard, ...]  # one card per returned item, in rank order
    summary: QualityCard  # the answers' mean; its stability is the answer set's overlap under perturbations
    references: dict[str, QualityCard] = field(default_factory=dict)  # baselines measured the same way
    perturbations: tuple[str, ...] = ()  # the small changes of the query stability was measured under
    forward_passes: int = 0  # model passes the cards cost (re-encodings, perturbed queries, a second head)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "answers": [card.to_dict() for card in self.answers],
            "summary": self.summary.to_dict(),
            "references": {name: card.to_dict() for name, card in self.references.items()},
            "perturbations": list(self.perturbations),
            "forward_passes": self.forward_passes,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CounterfactualQuality:
        return cls(
            answers=tuple(QualityCard.from_dict(card) for card in data.get("answers", [])),
            summary=QualityCard.from_dict(data["summary"]),
            references={name: QualityCard.from_dict(c) for name, c in data.get("references", {}).items()},
            perturbations=tuple(data.get("perturbations", ())),
            forward_passes=int(data.get("forward_passes", 0)),
            seconds=float(data.get("seconds", 0.0)),
        )


@dataclass
class CounterfactualResult:
    """Everything one counterfactual query returns."""

    side: str  # image | text
    mode: str
    text: str | None
    query: dict[str, Any]  # what the query was: image path/id, text, labels
    validity: Validity
    items: list[ResultItem]
    baselines: dict[str, list[ResultItem]] = field(default_factory=dict)
    stale: list[dict[str, Any]] = field(default_factory=list)  # index entries whose file changed
    warnings: list[str] = field(default_factory=list)  # what a user should know before trusting it
    calibration: str | None = None  # the calibration the verdicts used, in words (None: none held)
    candidates: int = 0  # distinct candidates re-scored
    path_values: list[float] = field(default_factory=list)  # objective along the path
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    # the original pair as the model reads it: score, p_match (flip: of the target's text, and the target's
    # class probability), and "settled" when it already is past the verified line for the goal (in words)
    original: dict[str, Any] = field(default_factory=dict)
    left_out: dict[str, int] = field(default_factory=dict)  # copies of the query dropped, by why (not itself)
    order: str = "by distance"  # the order of the items, in words
    quality: CounterfactualQuality | None = None  # the answers' quality cards (asked with quality=True)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; ``quality`` is there only when it was asked for."""
        quality = {"quality": self.quality.to_dict()} if self.quality is not None else {}
        return {
            "side": self.side,
            "mode": self.mode,
            "text": self.text,
            "query": self.query,
            "validity": self.validity.to_dict(),
            "items": [item.to_dict() for item in self.items],
            "baselines": {name: [item.to_dict() for item in items] for name, items in self.baselines.items()},
            "stale": self.stale,
            "warnings": self.warnings,
            "calibration": self.calibration,
            "candidates": self.candidates,
            "path_values": self.path_values,
            "timings": self.timings,
            "original": self.original,
            "left_out": self.left_out,
            "order": self.order,
            **quality,
        }


@dataclass
class SearchHit:
    """One hit of a plain search: the item and how close it is to the query (no counterfactual fields).

    ``to_dict`` also carries ``score_after`` (= ``score``), the name search hits had before, so readers of
    the earlier shape keep working.
    """

    id: int
    kind: str  # "image" | "caption"
    path: str | None = None  # image path relative to the index root
    text: str | None = None  # caption text
    similarity: float = 0.0  # cosine of the query's and the hit's embeddings
    score: float = 0.0  # the model's pair score of that cosine (scale x cosine + bias)
    p_match: float | None = None  # calibrated probability of a match (image-text pairs, when one holds)
    distance: float = 0.0  # 1 - similarity
    rank: int = 0

    @property
    def score_after(self) -> float:
        """``score`` under the name search hits had before."""
        return self.score

    @property
    def verified(self) -> bool:
        """False: a search hit is not a counterfactual answer (the flag search hits carried before)."""
        return False

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "score_after": self.score}


@dataclass
class SearchResult:
    """Plain retrieval: the query and its hits, best first (`SearchHit`)."""

    query: dict[str, Any]
    items: list[SearchHit]
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "items": [item.to_dict() for item in self.items],
            "warnings": self.warnings,
            "timings": self.timings,
        }
