"""Targets: small callables that turn embeddings into the one score an explainer explains.

A target is called as ``target(image_emb, text_emb) -> scores`` with L2-normalised embeddings
``image_emb (n, d)`` and ``text_emb (m, d)`` and returns ``(max(n, m),)`` scores. Explainers never know
what the score means, so one explainer serves a query, a counterfactual result, and "why A rather than B".
Every target scores through the model's `PairScore` (``model.pair_score``), so an explanation explains the
same score the engine moves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from counterclip.scores import PairScore


class Target(Protocol):
    """What every target offers: a call on embeddings and a short description."""

    def __call__(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor: ...

    def describe(self, texts: list[str]) -> str: ...


@dataclass(frozen=True)
class PairSimilarity:
    """The pair score of one text against a batch of images (or one image against many texts).

    Attributes:
        score: the model's pair score (``model.pair_score``); the default, ``PairScore()``, is the cosine.
    """

    score: PairScore = field(default_factory=PairScore)

    def __call__(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """``(n, d), (m, d) -> (max(n, m),)``; one side must have a single row (or both the same count)."""
        if image_emb.shape[0] != text_emb.shape[0] and 1 not in (image_emb.shape[0], text_emb.shape[0]):
            raise ValueError(
                f"pair similarity needs 1 or equal rows, got {image_emb.shape[0]} and {text_emb.shape[0]}"
            )
        return self.score.pairs(image_emb, text_emb)

    def describe(self, texts: list[str]) -> str:
        """One line for reports."""
        return f"similarity to {texts[0]!r}" if texts else "pair similarity"


@dataclass(frozen=True)
class LabelProbability:
    """Probability of label ``index`` among the texts (zero-shot classification over a label set).

    Attributes:
        index: which text (row of ``text_emb``) is the label explained.
        score: the model's pair score; its softmax over the labels gives the probability.
    """

    index: int
    score: PairScore = field(default_factory=PairScore)

    def __call__(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """``(n, d), (k, d) -> (n,)`` probability of label ``index`` for each image."""
        if not 0 <= self.index < text_emb.shape[0]:
            raise ValueError(f"label index {self.index} out of range for {text_emb.shape[0]} labels")
        return self.score.label_probabilities(image_emb, text_emb)[:, self.index]

    def describe(self, texts: list[str]) -> str:
        """One line for reports."""
        name = texts[self.index] if self.index < len(texts) else str(self.index)
        return f"probability of {name!r} among {len(texts)} labels"


@dataclass(frozen=True)
class Margin:
    """``score(image, text[a]) - score(image, text[b])``: "why A rather than B".

    Attributes:
        a: index of the text the image should match.
        b: index of the text it is contrasted with.
        score: the model's pair score.
    """

    a: int = 0
    b: int = 1
    score: PairScore = field(default_factory=PairScore)

    def __call__(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """``(n, d), (k, d) -> (n,)``."""
        return self.score.margin(image_emb, text_emb[self.a], text_emb[self.b])

    def describe(self, texts: list[str]) -> str:
        """One line for reports."""
        if len(texts) > max(self.a, self.b):
            return f"margin {texts[self.a]!r} over {texts[self.b]!r}"
        return f"margin text {self.a} over text {self.b}"


@dataclass(frozen=True)
class EmbeddingMargin:
    """``score(image, toward) - score(image, away)`` for two fixed embeddings; ignores the texts.

    For "why this counterfactual rather than the original": explain the counterfactual image with
    ``toward`` = the text (or target) embedding and ``away`` = the original image's embedding.

    Attributes:
        toward: ``(d,)`` L2-normalised embedding the image should be close to.
        away: ``(d,)`` L2-normalised embedding it is contrasted with.
        score: the model's pair score.
    """

    toward: torch.Tensor
    away: torch.Tensor
    score: PairScore = field(default_factory=PairScore)

    def __call__(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """``(n, d), ignored -> (n,)``."""
        toward = self.toward.to(image_emb.device, image_emb.dtype)
        away = self.away.to(image_emb.device, image_emb.dtype)
        return self.score.margin(image_emb, toward, away)

    def describe(self, texts: list[str]) -> str:
        """One line for reports."""
        return "margin of the target embedding over the reference embedding"
