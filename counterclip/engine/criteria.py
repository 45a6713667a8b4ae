"""Criteria: what a counterfactual must achieve, one class per mode.

A criterion is built from numbers (the original's score, the best and typical scores the index holds,
the options) and answers every question the engine asks about the mode: the objective the target path
climbs, when the path has gone far enough, the score reported for an item, which items are valid, the
rule in words, the point the path heads for, and the probe the baselines search with. A new mode is one
class here and one entry in `build_criterion`.

Every score goes through the model's `PairScore` (counterclip.scores), so the path, the validity test
and the reported numbers score the same thing.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

if TYPE_CHECKING:  # imported by the objectives: a plain search needs no torch
    import torch

from counterclip.engine.path import Objective, normalize
from counterclip.engine.results import Validity
from counterclip.errors import InputError
from counterclip.scores import PairScore

MODES = ("increase", "decrease", "flip")


@dataclass(frozen=True)
class Criterion(abc.ABC):
    """What one counterfactual query asks for.

    Attributes:
        validity: the rule in words and numbers, returned with every result.
    """

    validity: Validity

    #: The verdict's question: does a valid answer have to really match (increase, flip), or really not
    #: match (decrease), by the calibrated probability of `match_score`?
    wants_match: ClassVar[bool] = True

    @property
    def mode(self) -> str:
        return self.validity.mode

    @property
    def original(self) -> float:
        """The original's score (flip: its probability of the target label)."""
        return float(self.validity.original)

    @abc.abstractmethod
    def objective(self) -> Objective:
        """The function of the moving embedding that the target path maximises."""

    @abc.abstractmethod
    def stop(self, value: float) -> bool:
        """Whether a path point whose objective is ``value`` already satisfies the criterion."""

    @abc.abstractmethod
    def score(self, vectors: np.ndarray) -> np.ndarray:
        """The score reported for each of ``(n, d)`` candidate embeddings, ``(n,)``."""

    @abc.abstractmethod
    def valid(self, vectors: np.ndarray) -> np.ndarray:
        """``(n,)`` bool: which candidates satisfy the criterion."""

    def match_score(self, vectors: np.ndarray) -> np.ndarray:
        """The pair score whose calibrated probability decides the verdict (default: `score`)."""
        return self.score(vectors)

    @property
    def best_match_score(self) -> float | None:
        """The best pair score the index holds for the asked match (None when not measured)."""
        return self.validity.best

    @property
    @abc.abstractmethod
    def target_point(self) -> np.ndarray | None:
        """Where the path heads (searched beside the path), or None when it heads nowhere in particular."""

    @property
    @abc.abstractmethod
    def baseline_probe(self) -> np.ndarray:
        """The embedding the baselines search with (the nearest-unlike-neighbour probe)."""


@dataclass(frozen=True)
class _PairCriterion(Criterion):
    """Increase or decrease the pair score of the moving side against the ``fixed`` embedding."""

    pair_score: PairScore
    fixed: np.ndarray  # (d,) the side of the pair that stays
    moving: np.ndarray  # (d,) the original embedding of the side that moves

    sign: float = 1.0  # +1: the path raises the score; -1: it lowers it

    def objective(self) -> Objective:
        import torch

        target = torch.as_tensor(normalize(self.fixed), dtype=torch.float32)
        score, sign = self.pair_score, self.sign

        def objective(e: torch.Tensor) -> torch.Tensor:
            return sign * score.against(e, target)

        return objective

    def stop(self, value: float) -> bool:
        return value >= self.sign * self.validity.threshold

    def score(self, vectors: np.ndarray) -> np.ndarray:
        return self.pair_score.against(vectors, self.fixed)


@dataclass(frozen=True)
class Increase(_PairCriterion):
    """Near-original items that match the text: the score closes most of the gap to the best match."""

    @classmethod
    def build(
        cls,
        pair_score: PairScore,
        fixed: np.ndarray,
        moving: np.ndarray,
        best: float,
        typical: float,
        margin: float,
        threshold: float | None = None,
    ) -> Increase:
        """From the numbers: ``best`` and ``typical`` scores the index holds for ``fixed``, the margin.

        Valid: ``score >= best - margin * gap`` and above the original, where the gap runs from the
        original's score to the best (or from the typical score when the original is below it). An
        original that nearly matches leaves a small gap, so its own near-copies, which lack what the
        text asks for, cannot pass by being almost as good as the best match.
        """
        original = pair_score.of_cos(float(np.dot(moving, fixed)))
        spread = max(best - typical, 1e-6)
        gap = max(min(best - original, spread), 1e-6)
        if threshold is None:
            threshold = best - margin * gap
            start = "original" if best - original < spread else "typical score"
            rule = (
                f"score >= {threshold:.3f} (best match in the index {best:.3f} minus {margin:g} of the "
                f"gap {gap:.3f} from the {start} to it) and above the original {original:.3f}"
            )
        else:
            rule = f"score >= {threshold:.3f} (user threshold)"
        validity = Validity("increase", rule, float(threshold), best, typical, original)
        return cls(validity, pair_score, np.asarray(fixed), np.asarray(moving), 1.0)

    def valid(self, vectors: np.ndarray) -> np.ndarray:
        # compared in float64, as Python floats would be: float32 rounding must not move the line
        scores = self.score(vectors).astype(np.float64)
        return (scores >= self.validity.threshold) & (scores > self.original)

    @property
    def target_point(self) -> np.ndarray:
        return self.fixed

    @property
    def baseline_probe(self) -> np.ndarray:
        return self.fixed


@dataclass(frozen=True)
class Decrease(_PairCriterion):
    """Near-original items that stop matching the text: the score falls well below the best match."""

    wants_match: ClassVar[bool] = False

    @classmethod
    def build(
        cls,
        pair_score: PairScore,
        fixed: np.ndarray,
        moving: np.ndarray,
        best: float,
        typical: float,
        margin: float,
        threshold: float | None = None,
    ) -> Decrease:
        """Valid: ``score <= best - margin * (best - typical)`` and below the original."""
        original = pair_score.of_cos(float(np.dot(moving, fixed)))
        spread = max(best - typical, 1e-6)
        if threshold is None:
            threshold = best - margin * spread
            rule = (
                f"score <= {threshold:.3f} (best match in the index {best:.3f} minus {margin:g} of "
                f"the best-typical spread {spread:.3f}) and below the original {original:.3f}"
            )
        else:
            rule = f"score <= {threshold:.3f} (user threshold)"
        validity = Validity("decrease", rule, float(threshold), best, typical, original)
        return cls(validity, pair_score, np.asarray(fixed), np.asarray(moving), -1.0)

    def valid(self, vectors: np.ndarray) -> np.ndarray:
        scores = self.score(vectors).astype(np.float64)
        return (scores <= self.validity.threshold) & (scores < self.original)

    @property
    def target_point(self) -> None:
        return None

    @property
    def baseline_probe(self) -> np.ndarray:
        return self.moving


@dataclass(frozen=True)
class Flip(Criterion):
    """The zero-shot prediction over a label set becomes the target label."""

    pair_score: PairScore
    label_vecs: np.ndarray  # (k, d) label embeddings
    target_index: int  # which label the prediction must become
    labels: tuple[str, ...] = ()

    @classmethod
    def build(
        cls,
        pair_score: PairScore,
        original: np.ndarray,
        labels: Sequence[str],
        label_vecs: np.ndarray,
        target: str | None,
    ) -> Flip:
        """Check the label set and target; the original's probability of the target is the baseline."""
        labels = list(labels)
        target_index = labels.index(target)
        probabilities = pair_score.label_probabilities(np.asarray(original)[None], label_vecs)[0]
        if int(np.argmax(probabilities)) == target_index:
            raise InputError(
                f"the image is already classified as {labels[target_index]!r} (class probability "
                f"{probabilities[target_index]:.2f}): nothing to flip; choose another target"
            )
        validity = Validity(
            "flip",
            f"predicted label becomes {labels[target_index]!r} (argmax over {len(labels)} labels)",
            None,
            original=float(probabilities[target_index]),
            target=labels[target_index],
        )
        return cls(validity, pair_score, np.asarray(label_vecs), target_index, tuple(labels))

    def objective(self) -> Objective:
        import torch

        labels = torch.as_tensor(normalize(self.label_vecs), dtype=torch.float32)
        score, index = self.pair_score, self.target_index

        def objective(e: torch.Tensor) -> torch.Tensor:
            return score.label_log_probability(e, labels, index)

        return objective

    def stop(self, value: float) -> bool:
        return value >= math.log(0.5)  # the target label holds half the probability: it is the argmax

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """``(n, k)`` label probabilities."""
        return self.pair_score.label_probabilities(vectors, self.label_vecs)

    def score(self, vectors: np.ndarray) -> np.ndarray:
        return self.probabilities(vectors)[:, self.target_index]

    def match_score(self, vectors: np.ndarray) -> np.ndarray:
        """The pair score of each image with the target label: a flip is verified when the image really
        matches the label it flips to, not only when that label beats the others."""
        return self.pair_score.against(vectors, self.label_vecs[self.target_index])

    @property
    def best_match_score(self) -> None:
        return None

    def valid(self, vectors: np.ndarray) -> np.ndarray:
        return np.argmax(self.probabilities(vectors), axis=-1) == self.target_index

    @property
    def target_point(self) -> np.ndarray:
        return self.label_vecs[self.target_index]

    @property
    def baseline_probe(self) -> np.ndarray:
        return self.label_vecs[self.target_index]


def check_labels(labels: Sequence[str] | None) -> list[str]:
    """Clean a flip query's label set, or raise `InputError` saying what is wrong."""
    cleaned = [label.strip() for label in (labels or []) if label.strip()]
    if len(cleaned) < 2:
        raise InputError("mode flip needs at least two labels, e.g. --labels 'a cat,a dog'")
    if len(set(cleaned)) != len(cleaned):
        raise InputError("labels must be distinct")
    return cleaned


def check_target(labels: list[str], target: str | None, probabilities: np.ndarray) -> str:
    """The label a flip must reach: the one asked, else the most likely label other than the predicted one
    (the nearest flip; the first label typed is usually the image's own class)."""
    if target is None or not target.strip():
        ranked = np.argsort(-np.asarray(probabilities), kind="stable")
        return labels[int(ranked[1])]
    if target.strip() not in labels:
        raise InputError(f"target {target!r} is not one of the labels: {', '.join(labels)}")
    return target.strip()
