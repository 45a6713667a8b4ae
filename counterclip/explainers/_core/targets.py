"""Targets: small callables that turn embeddings into the one score an explainer explains.

A target is called as ``target(image_emb, text_emb) -> scores`` with L2-normalised embeddings
``image_emb (n, d)`` and ``text_emb (m, d)`` and returns ``(max(n, m),)`` scores. Explainers never know
what the score means, so one explainer serves a query, a counterfactual result, and "why A rather than B".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


class Target(Protocol):
    """What every target offers: a call on embeddings and a short description."""

    def __call__(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor: ...

    def describe(self, texts: list[str]) -> str: ...


@dataclass(frozen=True)
class PairSimilarity:
    """``scale * cos(image, text)`` for one text against a batch of images (or one image, many texts).

    Attributes:
        scale: the model's logit scale (``ClipModel.logit_scale``); 1.0 gives the plain cosine.
    """

    scale: float = 1.0

    def __call__(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """``(n, d), (m, d) -> (max(n, m),)``; one side must have a single row (or both the same count)."""
        if image_emb.shape[0] != text_emb.shape[0] and 1 not in (image_emb.shape[0], text_emb.shape[0]):
            raise ValueError(
                f"pair similarity needs 1 or equal rows, got {image_emb.shape[0]} and {text_emb.shape[0]}"
            )
        return self.scale * (image_emb * text_emb).sum(dim=-1)

    def describe(self, texts: list[str]) -> str:
        """One line for reports."""
        return f"similarity to {texts[0]!r}" if texts else "pair similarity"


@dataclass(frozen=True)
class LabelProbability:
    """Softmax probability of label ``index`` among the texts (zero-shot classification).

    Attributes:
        index: which text (row of ``text_emb``) is the label explained.
        scale: the model's logit scale (softmax temperature).
    """

    index: int
    scale: float = 100.0

    def __call__(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """``(n, d), (k, d) -> (n,)`` probability of label ``index`` for each image."""
        if not 0 <= self.index < text_emb.shape[0]:
            raise ValueError(f"label index {self.index} out of range for {text_emb.shape[0]} labels")
        logits = self.scale * image_emb @ text_emb.T
        return torch.softmax(logits, dim=-1)[:, self.index]

    def describe(self, texts: list[str]) -> str:
        """One line for reports."""
        name = texts[self.index] if self.index < len(texts) else str(self.index)
        return f"probability of {name!r} among {len(texts)} labels"


@dataclass(frozen=True)
class Margin:
    """``scale * (cos(image, text[a]) - cos(image, text[b]))``: "why A rather than B".

    Attributes:
        a: index of the text the image should match.
        b: index of the text it is contrasted with.
        scale: the model's logit scale.
    """

    a: int = 0
    b: int = 1
    scale: float = 1.0

    def __call__(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """``(n, d), (k, d) -> (n,)``."""
        return self.scale * (image_emb @ text_emb[self.a] - image_emb @ text_emb[self.b])

    def describe(self, texts: list[str]) -> str:
        """One line for reports."""
        if len(texts) > max(self.a, self.b):
            return f"margin {texts[self.a]!r} over {texts[self.b]!r}"
        return f"margin text {self.a} over text {self.b}"


@dataclass(frozen=True)
class EmbeddingMargin:
    """``scale * (cos(image, toward) - cos(image, away))`` for two fixed embeddings; ignores the texts.

    For "why this counterfactual rather than the original": explain the counterfactual image with
    ``toward`` = the text (or target) embedding and ``away`` = the original image's embedding.

    Attributes:
        toward: ``(d,)`` L2-normalised embedding the image should be close to.
        away: ``(d,)`` L2-normalised embedding it is contrasted with.
        scale: the model's logit scale.
    """

    toward: torch.Tensor
    away: torch.Tensor
    scale: float = 1.0

    def __call__(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """``(n, d), ignored -> (n,)``."""
        toward = self.toward.to(image_emb.device, image_emb.dtype)
        away = self.away.to(image_emb.device, image_emb.dtype)
        return self.scale * (image_emb @ toward - image_emb @ away)

    def describe(self, texts: list[str]) -> str:
        """One line for reports."""
        return "margin of the target embedding over the reference embedding"
