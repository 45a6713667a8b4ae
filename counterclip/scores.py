"""The score of an (image, text) pair, defined once.

Every part of counterclip that scores a pair (the engine's objectives and validity numbers, the target
path, the explainers' targets, the model's own ``score``) goes through `PairScore`, so a counterfactual
moves *the* score and an explanation explains *the same* score. A model family contributes only its
numbers: CLIP a learned temperature (``scale = exp(logit_scale)``, no bias), SigLIP a scale and a bias
read through a sigmoid, BLIP's contrastive head its own scale.

Works on numpy arrays and torch tensors alike (same formula, same operation order), so a score computed
from stored vectors and one computed inside an autograd graph agree to float rounding.

Examples::

    >>> score = PairScore(scale=100.0)
    >>> float(score.of_cos(0.25))
    25.0
    >>> score.label_probabilities(np.eye(2, dtype=np.float32)[:1], np.eye(2, dtype=np.float32)).round(3)
    array([[1., 0.]], dtype=float32)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

Array = TypeVar("Array")  # np.ndarray or torch.Tensor (same type in, same type out)

LINKS = ("softmax", "sigmoid")


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


@dataclass(frozen=True)
class PairScore:
    """``s(image, text) = scale * cos(image, text) + bias`` for L2-normalised embeddings.

    Attributes:
        scale: multiplies the cosine (CLIP: the learned temperature, already exponentiated; 1.0 for a
            plain cosine).
        bias: added after scaling (SigLIP's learned bias; 0 for CLIP).
        link: how one pair's score reads as a probability. ``softmax``: only relative to other texts
            (CLIP's contrastive training gives no absolute meaning to one pair); ``sigmoid``: an absolute
            match probability per pair (SigLIP).
    """

    scale: float = 1.0
    bias: float = 0.0
    link: str = "softmax"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"score scale must be a positive finite number, got {self.scale}")
        if not math.isfinite(self.bias):
            raise ValueError(f"score bias must be finite, got {self.bias}")
        if self.link not in LINKS:
            raise ValueError(f"score link must be one of {', '.join(LINKS)}, got {self.link!r}")

    # --- one formula -------------------------------------------------------------------------------
    def of_cos(self, cos: Array) -> Array:
        """Scores from cosines (any shape; a Python float gives a float)."""
        scaled = self.scale * cos
        return scaled + self.bias if self.bias else scaled

    def to_cos(self, score: float) -> float:
        """The cosine that gives ``score`` (inverse of `of_cos`)."""
        return (score - self.bias) / self.scale

    def pairs(self, image_emb: Array, text_emb: Array) -> Array:
        """Row-wise scores: ``(n, d), (n, d) -> (n,)``; either side may be one row ``(d,)`` or ``(1, d)``."""
        return self.of_cos((image_emb * text_emb).sum(-1))

    def against(self, vectors: Array, fixed: Array) -> Array:
        """Scores of many vectors against one fixed embedding: ``(n, d), (d,) -> (n,)``."""
        return self.of_cos(vectors @ fixed)

    def matrix(self, a: Array, b: Array) -> Array:
        """All pairs: ``(n, d), (m, d) -> (n, m)``."""
        return self.of_cos(a @ b.T)

    # --- label sets (zero-shot classification) ------------------------------------------------------
    def label_logits(self, image_emb: Array, label_embs: Array) -> Array:
        """``(n, d), (k, d) -> (n, k)`` pair scores of each image with each label (the scale is applied to
        the images first: one rounding order for every caller)."""
        logits = (self.scale * image_emb) @ label_embs.T
        return logits + self.bias if self.bias else logits

    def label_probabilities(self, image_emb: Array, label_embs: Array) -> Array:
        """``(n, d), (k, d) -> (n, k)``: softmax over the label set (each row sums to 1)."""
        logits = self.label_logits(image_emb, label_embs)
        if _is_torch(logits):
            import torch

            return torch.softmax(logits, dim=-1)
        logits = logits - logits.max(axis=-1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=-1, keepdims=True)

    def label_log_probability(self, image_emb: Array, label_embs: Array, index: int) -> Array:
        """``(n, d), (k, d) -> (n,)`` log-probability of label ``index`` (differentiable for tensors)."""
        logits = self.label_logits(image_emb, label_embs)
        if _is_torch(logits):
            import torch

            return torch.log_softmax(logits, dim=-1)[..., index]
        shifted = logits - logits.max(axis=-1, keepdims=True)
        return shifted[..., index] - np.log(np.exp(shifted).sum(axis=-1))

    def margin(self, image_emb: Array, toward: Array, away: Array) -> Array:
        """``score(image, toward) - score(image, away)`` for ``(n, d)`` images and two ``(d,)`` embeddings
        (the bias cancels): "why this rather than that"."""
        return self.scale * (image_emb @ toward - image_emb @ away)

    # --- absolute reading ----------------------------------------------------------------------------
    @property
    def absolute(self) -> bool:
        """True when one pair's score is itself a match probability (a sigmoid link)."""
        return self.link == "sigmoid"

    def match_probability(self, score: Array) -> Array:
        """The model's own probability that a pair matches, for a ``sigmoid`` link.

        Raises:
            ValueError: for a ``softmax`` link, whose single-pair scores carry no absolute probability
                (calibrate them on known pairs instead).
        """
        if not self.absolute:
            raise ValueError("this model's pair score has no absolute probability (softmax link)")
        if _is_torch(score):
            import torch

            return torch.sigmoid(score)
        return 1.0 / (1.0 + np.exp(-np.asarray(score, dtype=np.float64)))

    def to_dict(self) -> dict[str, Any]:
        """JSON form (recorded with results and calibrations)."""
        return {"scale": self.scale, "bias": self.bias, "link": self.link}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PairScore:
        """Inverse of `to_dict`; unknown keys raise."""
        unknown = set(data) - {"scale", "bias", "link"}
        if unknown:
            raise ValueError(f"pair score has unknown field(s) {sorted(unknown)}")
        return cls(**data)


# --- the numbers in words ----------------------------------------------------------------------------
# One vocabulary for every place that shows a number (the CLI, the reports, the web app, the API):
# `counterclip.engine.results.NUMBERS` is this dict, and `number_words` says the same for one result.

#: What each number of an answer means.
NUMBERS: dict[str, str] = {
    "score": "the model's pair score: scale x cosine (+ bias); comparable only within one model and one "
    "kind of pair",
    "p_match": "calibrated probability, 0-1, that the image and the text really match (flip: the image "
    "and the target label's text)",
    "class_probability": "flip: softmax over the given labels, 0-1; says which label wins, not whether any "
    "label really fits",
    "distance": "1 - cosine to the original's embedding, 0 (same) to 2 (opposite); near-copies sit below 0.05",
    "similarity": "search: cosine of the query's and the hit's embeddings, -1 to 1 (the score is the model's "
    "pair score of it)",
}

#: The kinds of pair a score is computed on, as a reader names them.
PAIR_KINDS: dict[str, str] = {
    "image-text": "image\u2013text",
    "image-image": "image\u2013image",
    "text-text": "text\u2013text",
}


def pair_kind(by_text: bool, collection: str) -> str:
    """The kind of pair a search scores: a text against images (or an image against captions) is
    ``image-text``; within one kind, ``text-text`` or ``image-image``."""
    if by_text == (collection == "images"):
        return "image-text"
    return "text-text" if by_text else "image-image"


def score_words(score: PairScore | None, pair: str = "image-text") -> str:
    """The score of one kind of pair, named with its scale and range ("the model's image–text score, 35.2 × cosine:
    from -35.2 (opposite) to 35.2 (same direction); ...")."""
    kind = PAIR_KINDS.get(pair, pair)
    if score is None:
        return f"the model's {kind} score; " + NUMBERS["score"].split("; ", 1)[1]
    bias = f" {'+' if score.bias >= 0 else '-'} {abs(score.bias):.1f}" if score.bias else ""
    low, high = score.of_cos(-1.0), score.of_cos(1.0)
    return (
        f"the model's {kind} score, {score.scale:.1f} \u00d7 cosine{bias}: from {low:.1f} (opposite) to "
        f"{high:.1f} (same direction); comparable only within one model and one kind of pair"
    )


def number_words(score: PairScore | None, pair: str = "image-text", flip: bool = False) -> dict[str, str]:
    """The numbers a result shows, each with what it means and its range, for a legend.

    Args:
        score: the model's pair score (None: the scale is not named).
        pair: ``image-text`` (counterfactuals; search across image and text), ``image-image`` or
            ``text-text`` (search within one kind).
        flip: a flip result (the class probability over the labels comes first).

    Returns:
        ``{name as shown: meaning}``: ``score``, ``p(match)`` (image-text pairs only), ``class probability``
        (flip), ``distance``.
    """
    words = {"score": score_words(score, pair)}
    if flip:
        words = {"class probability": NUMBERS["class_probability"].removeprefix("flip: "), **words}
    if pair == "image-text":
        words["p(match)"] = NUMBERS["p_match"]
    words["distance"] = NUMBERS["distance"]
    return words
