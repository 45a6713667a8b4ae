"""The five qualities of an explanation, as one card, and the plain measures behind them.

The thesis this project implements judges an explanation by five qualities: **faithfulness** (change the
input as the explanation says and the model's output changes as claimed), **understandability** (a
person can grasp it: few things, concentrated), **completeness** (it covers what matters), **stability**
(small input changes, small explanation changes) and **contrastivity** (why this and not another). A
`QualityCard` holds one `Measure` for each: a number with its definition, a reference value to read it
against (a baseline, a random order) and one plain sentence. The same card is used for a counterfactual
answer (`counterclip.engine.quality`), an attribution map (`counterclip.explainers.quality`) and an
aggregate over a query set (`aggregate`, `counterclip.evaluation.quality`).

This module sits below everything else (numpy only), so the engine, the explainers, the report, the
server and the evaluation all read and write the same card.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

QUALITIES: tuple[str, ...] = (
    "faithfulness",
    "understandability",
    "completeness",
    "stability",
    "contrastivity",
)

#: What each quality asks, in a few words (the card's headings; the web app's hover text).
QUESTIONS: dict[str, str] = {
    "faithfulness": "does it reflect what the model really does?",
    "understandability": "can a person grasp it: how few things, how concentrated?",
    "completeness": "does it cover all that matters?",
    "stability": "do small changes of the input leave it the same?",
    "contrastivity": "does it say why this and not the alternative?",
}


@dataclass(frozen=True)
class Measure:
    """One quality of one explanation: a number, what it means, what to read it against.

    Attributes:
        value: the number (None: not measurable here; ``sentence`` says why).
        definition: what the number is, in one line (units, range).
        higher_is_better: the direction of the number.
        reference: the same number for a baseline or a random order (None when there is none).
        reference_name: what the reference is ("nearest unlike neighbour", "random cell orders").
        sentence: one plain sentence for a person.
        details: the figures behind the number (JSON-friendly).
    """

    value: float | None
    definition: str
    higher_is_better: bool = True
    reference: float | None = None
    reference_name: str = ""
    sentence: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def beats_reference(self) -> bool | None:
        """Whether the value is better than the reference (None when either is missing)."""
        if self.value is None or self.reference is None:
            return None
        if math.isclose(self.value, self.reference, rel_tol=1e-6, abs_tol=1e-6):  # a tie, not a win
            return False
        return self.value > self.reference if self.higher_is_better else self.value < self.reference

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field and ``beats_reference``."""
        return {
            "value": self.value,
            "definition": self.definition,
            "higher_is_better": self.higher_is_better,
            "reference": self.reference,
            "reference_name": self.reference_name,
            "beats_reference": self.beats_reference,
            "sentence": self.sentence,
            "details": dict(self.details),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Measure:
        """The measure of a `to_dict` (``beats_reference`` is derived, not read)."""
        names = ("value", "definition", "higher_is_better", "reference", "reference_name", "sentence")
        return cls(**{k: data[k] for k in names if k in data}, details=dict(data.get("details") or {}))

    def shown(self, digits: int = 2) -> str:
        """The value as text ("n/a" when not measurable)."""
        return "n/a" if self.value is None else f"{self.value:.{digits}f}"


def not_measured(definition: str, why: str, higher_is_better: bool = True) -> Measure:
    """A measure that cannot be taken here, with why in its sentence."""
    return Measure(None, definition, higher_is_better, sentence=why)


@dataclass(frozen=True)
class QualityCard:
    """The five qualities of one explanation (an answer, a map) or of a set of them (an aggregate).

    Attributes:
        subject: what is judged, in words ("answer #1", "map: why it matches 'a red circle'").
        faithfulness / understandability / completeness / stability / contrastivity: one `Measure` each.
        forward_passes: the model passes the card itself cost (beyond the explanation).
        seconds: the time it took.
    """

    subject: str
    faithfulness: Measure
    understandability: Measure
    completeness: Measure
    stability: Measure
    contrastivity: Measure
    forward_passes: int = 0
    seconds: float = 0.0

    def measures(self) -> dict[str, Measure]:
        """Quality name -> its measure, in `QUALITIES` order."""
        return {name: getattr(self, name) for name in QUALITIES}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the subject, each quality's measure, the cost."""
        return {
            "subject": self.subject,
            **{name: measure.to_dict() for name, measure in self.measures().items()},
            "forward_passes": self.forward_passes,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QualityCard:
        """The card of a `to_dict` (the client rebuilds the engine's cards from the service's JSON)."""
        return cls(
            subject=data.get("subject", ""),
            **{name: Measure.from_dict(data[name]) for name in QUALITIES},
            forward_passes=int(data.get("forward_passes", 0)),
            seconds=float(data.get("seconds", 0.0)),
        )

    def compact(self) -> str:
        """All five in one line (a note under a map): ``quality: faithfulness 0.87 (random cell orders
        0.08); understandability ...``."""
        parts = []
        for name, measure in self.measures().items():
            reference = measure.reference is not None and measure.reference_name
            parts.append(
                f"{name} {measure.shown()}"
                + (f" ({measure.reference_name} {measure.reference:.2f})" if reference else "")
            )
        return "quality: " + "; ".join(parts)

    def lines(self) -> list[str]:
        """One line per quality: name, value, reference, sentence (the CLI's and the report's block)."""
        return [card_line(name, measure) for name, measure in self.measures().items()]


def card_line(name: str, measure: Measure) -> str:
    """``faithfulness 0.98 (nearest unlike neighbour 0.97; higher is better): sentence``."""
    direction = "higher is better" if measure.higher_is_better else "lower is better"
    reference = (
        f"{measure.reference_name} {measure.reference:.2f}; "
        if measure.reference is not None and measure.reference_name
        else ""
    )
    return f"{name} {measure.shown()} ({reference}{direction}): {measure.sentence}".rstrip(": ")


def aggregate(cards: Sequence[QualityCard], subject: str) -> QualityCard:
    """The mean card over ``cards``: each quality's mean value and mean reference over the cards that
    measured it, with how many did and the share that beat their reference.

    Args:
        cards: cards of one kind (e.g. every top answer of a query set).
        subject: what the aggregate is about.

    Returns:
        `QualityCard` whose measures carry ``details`` ``{measured, beats_reference_rate}``.
    """
    if not cards:
        empty = not_measured("no explanation to aggregate", "nothing was measured")
        return QualityCard(subject, empty, empty, empty, empty, empty)
    measures = {name: _mean_measure([card.measures()[name] for card in cards]) for name in QUALITIES}
    passes = sum(card.forward_passes for card in cards)
    seconds = sum(card.seconds for card in cards)
    return QualityCard(subject, **measures, forward_passes=passes, seconds=seconds)


def _mean_measure(measures: list[Measure]) -> Measure:
    """The mean of measures of one quality (definition and direction from the first that measured)."""
    taken = [m for m in measures if m.value is not None]
    first = taken[0] if taken else measures[0]
    if not taken:
        return not_measured(first.definition, "not measurable for any of them", first.higher_is_better)
    references = [m.reference for m in taken if m.reference is not None]
    beats = [m.beats_reference for m in taken if m.beats_reference is not None]
    value = float(np.mean([m.value for m in taken]))
    reference = float(np.mean(references)) if references else None
    details = {
        "measured": len(taken),
        "of": len(measures),
        "beats_reference_rate": float(np.mean(beats)) if beats else None,
    }
    sentence = f"mean over {len(taken)} of {len(measures)}"
    if beats:
        sentence += f"; better than the {first.reference_name or 'reference'} in {np.mean(beats):.0%}"
    return Measure(
        value, first.definition, first.higher_is_better, reference, first.reference_name, sentence, details
    )


# --- the plain measures (numbers in, a number out; each tested against a case with a known answer) ----


def agreement(claimed: float, measured: float, tolerance: float = 1e-9) -> float:
    """How well a measured change agrees with a claimed one, 0-1: the smaller over the larger when both
    go the same way (1 = the same change), 0 when they go opposite ways or one is nothing."""
    if abs(claimed) <= tolerance and abs(measured) <= tolerance:
        return 1.0
    if claimed * measured <= 0:
        return 0.0
    small, large = sorted((abs(claimed), abs(measured)))
    return float(small / large)


def gap_share(before: float, after: float, goal: float) -> float | None:
    """The share of the gap from ``before`` to ``goal`` that ``after`` closes, clipped to 0-1 (None when
    there is no gap: ``before`` already is at the goal)."""
    gap = goal - before
    if abs(gap) <= 1e-12:
        return None
    return float(min(max((after - before) / gap, 0.0), 1.0))


def average_overlap(reference: Sequence[Any], other: Sequence[Any], depth: int | None = None) -> float:
    """Rank-aware overlap of two answer lists, 0-1: the mean over depths d = 1..depth of the share of
    the first d items the two lists share (1 = the same items in the same order; a reordering or other
    items lower it). Two empty lists agree (1)."""
    depth = depth or max(len(reference), len(other))
    if depth == 0:
        return 1.0
    shares = [len(set(reference[:d]) & set(other[:d])) / d for d in range(1, depth + 1)]
    return float(np.mean(shares))


def presence_share(item: Any, lists: Sequence[Sequence[Any]]) -> float | None:
    """The share of ``lists`` that contain ``item`` (None without lists)."""
    return float(np.mean([item in answers for answers in lists])) if lists else None


def pair_probability(goal_score: np.ndarray, foil_score: np.ndarray) -> np.ndarray:
    """``p(goal | {goal, foil})`` from two pair scores (a two-way softmax): 1 = surely the goal."""
    return 1.0 / (1.0 + np.exp(np.clip(np.asarray(foil_score) - np.asarray(goal_score), -60, 60)))


def concentration(values: np.ndarray, top_share: float = 0.1) -> float:
    """The share of a map's absolute mass its top ``top_share`` of cells hold, 0-1 (a flat map holds
    ``top_share``; an empty map ``top_share`` too: it says nothing about where)."""
    flat = np.abs(np.asarray(values, dtype=np.float64)).reshape(-1)
    top = max(1, int(math.ceil(top_share * flat.size)))
    total = flat.sum()
    if total <= 0:
        return float(top / flat.size)
    return float(np.sort(flat)[::-1][:top].sum() / total)


def map_distance(first: np.ndarray, second: np.ndarray) -> float:
    """How different two maps are, 0-1: half the L1 distance of the maps each scaled to unit absolute
    mass, signs kept (0 = the same map up to scale; 1 = evidence in different places, or the same
    places with opposite signs). Two constant maps of one sign are the same map (0)."""
    a, b = (_unit_mass(np.asarray(m, dtype=np.float64).reshape(-1)) for m in (first, second))
    return float(0.5 * np.abs(a - b).sum())


def _unit_mass(values: np.ndarray) -> np.ndarray:
    total = np.abs(values).sum()
    return values / total if total > 0 else np.full_like(values, 1.0 / max(values.size, 1))


def rank_correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman rank correlation of two maps' cells, -1..1 (1 = the same order of cells; two constant
    maps agree: 1; a constant against a varying map: 0)."""
    a, b = (np.asarray(m, dtype=np.float64).reshape(-1) for m in (first, second))
    flat_a, flat_b = bool(np.ptp(a) == 0), bool(np.ptp(b) == 0)
    if flat_a or flat_b:
        return 1.0 if flat_a and flat_b else 0.0
    ranks_a, ranks_b = _ranks(a), _ranks(b)
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 0, ties given their mean rank."""
    order = np.argsort(values, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(values[order])) + 1]
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), dtype=np.float64)
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end - 1) / 2
    return ranks


def completeness_error(attribution_sum: float, score: float, baseline_score: float) -> float | None:
    """``|sum of attributions - (f(x) - f(baseline))| / |f(x) - f(baseline)|``: 0 when the attributions
    add up to the whole change of the score (integrated gradients' completeness axiom); None when the
    score does not change between the baseline and the input."""
    change = score - baseline_score
    if abs(change) <= 1e-12:
        return None
    return float(abs(attribution_sum - change) / abs(change))
