"""Calibrated absolute evidence: the probability that an (image, text) pair is a true match.

A CLIP score means something only relative to other texts (the model was trained with a softmax), so
"verified" cannot rest on the score alone: the best item an index holds is not a match just because it is
the best. A `Calibration` maps a pair score to ``p(match)``, fitted on pairs whose truth is known:

- ``captions``: images against their own captions (positives) and other images' captions (negatives),
  at build time from sidecars or a captions file, or later with ``counterclip calibrate``;
- ``model``: shipped with a model (the bundled shapes model: fitted on the shapes world, where the truth
  of every caption is known, with one-attribute-wrong captions as hard negatives);
- ``self``: no known pairs; the model's own best description of each image among the index's captions
  stands for a positive, random pairs for negatives (weaker evidence, said so in every verdict).

A model whose score has an absolute reading (a sigmoid link, `PairScore.absolute`) needs none: its own
probability is used (source ``native``).

Stored as JSON (two logistic coefficients and summaries), never pickled, with the fingerprint of the
model it belongs to: a calibration for another model is refused.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from counterclip.errors import InputError

SOURCES = ("captions", "model", "self", "native")
MIN_PAIRS = 20  # fewer positives than this give no calibration worth the name
FORMAT = "counterclip-calibration"


@dataclass(frozen=True)
class ScoreSummary:
    """Where a set of pair scores lies (for messages such as "true pairs score 18-24")."""

    n: int
    p10: float
    p50: float
    p90: float

    @classmethod
    def of(cls, scores: np.ndarray) -> ScoreSummary:
        p10, p50, p90 = np.percentile(np.asarray(scores, dtype=np.float64), [10, 50, 90])
        return cls(int(len(scores)), float(p10), float(p50), float(p90))


@dataclass(frozen=True)
class Calibration:
    """``p(match | score) = sigmoid(slope * score + intercept)`` for one model.

    Attributes:
        source: ``captions`` | ``model`` | ``self`` | ``native`` (see the module doc).
        fingerprint: the weights fingerprint of the model it belongs to ("" for ``native``).
        slope / intercept: the logistic map (fitted with balanced classes: the probability that a pair
            with this score is one of the true pairs rather than one of the others, at even odds).
        positives / negatives: summaries of the scores it was fitted on.
        auc: how well the score separates them (ROC AUC on held-out pairs; 0.5 = not at all).
        description: one line for people ("captions of 1,200 images in the index").
    """

    source: str
    fingerprint: str
    slope: float
    intercept: float
    positives: ScoreSummary | None = None
    negatives: ScoreSummary | None = None
    auc: float | None = None
    description: str = ""
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise InputError(f"calibration source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if not (math.isfinite(self.slope) and math.isfinite(self.intercept)):
            raise InputError("calibration coefficients must be finite numbers")

    def probability(self, scores: Any) -> np.ndarray:
        """``p(match)`` for pair scores (any shape), float64."""
        z = self.slope * np.asarray(scores, dtype=np.float64) + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))

    def score_at(self, probability: float = 0.5) -> float:
        """The score at which ``p(match)`` equals ``probability`` (the match line)."""
        if self.slope <= 0:
            return math.inf
        return (math.log(probability / (1.0 - probability)) - self.intercept) / self.slope

    @property
    def informative(self) -> bool:
        """False when the score hardly separates matches from the rest (AUC below 0.65): a random or
        untrained model; its probabilities are then not evidence either way."""
        return self.slope > 0 and (self.auc is None or self.auc >= 0.65)

    def name(self) -> str:
        """How a verdict names the calibration it used."""
        auc = f", AUC {self.auc:.2f}" if self.auc is not None else ""
        return f"{self.source} calibration ({self.description}{auc})" if self.description else self.source

    # --- JSON ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Any, where: str = "calibration") -> Calibration:
        """Inverse of `to_dict`; `InputError` naming ``where`` for anything malformed."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InputError(f"{where} is not a counterclip calibration")
        body = {k: v for k, v in data.items() if k != "format"}
        try:
            for key in ("positives", "negatives"):
                if body.get(key) is not None:
                    body[key] = ScoreSummary(**body[key])
            return cls(**body)
        except TypeError as exc:
            raise InputError(f"{where} is malformed: {exc}") from None

    def write(self, path: str | Path) -> Path:
        from counterclip._fileio import atomic_write

        return atomic_write(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def read(cls, path: str | Path) -> Calibration:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"calibration file {path} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"calibration file {path} is unreadable: {exc}") from None
        return cls.from_dict(data, f"calibration file {path}")

    def check_model(self, fingerprint: str, spec: str = "this model") -> Calibration:
        """Return self when it belongs to the model with ``fingerprint``; `InputError` otherwise."""
        if self.source != "native" and self.fingerprint != fingerprint:
            raise InputError(
                f"the calibration was fitted for another model (fingerprint {self.fingerprint[:12]}), not "
                f"{spec} ({fingerprint[:12]}); calibrate this model's index with `counterclip calibrate`"
            )
        return self


def fit_calibration(
    positives: np.ndarray,
    negatives: np.ndarray,
    source: str,
    fingerprint: str,
    description: str = "",
    seed: int = 0,
) -> Calibration:
    """Fit `Calibration` on pair scores of true pairs and of other pairs.

    Logistic regression (scikit-learn) with balanced class weights, so the probability does not depend on
    how many negatives were drawn; the AUC is measured on a held-out quarter of the pairs.

    Raises:
        InputError: fewer than `MIN_PAIRS` positives or negatives.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    positives = np.asarray(positives, dtype=np.float64).reshape(-1)
    negatives = np.asarray(negatives, dtype=np.float64).reshape(-1)
    positives, negatives = positives[np.isfinite(positives)], negatives[np.isfinite(negatives)]
    if len(positives) < MIN_PAIRS or len(negatives) < MIN_PAIRS:
        raise InputError(
            f"calibration needs at least {MIN_PAIRS} true pairs and {MIN_PAIRS} others, got "
            f"{len(positives)} and {len(negatives)}"
        )
    x = np.concatenate([positives, negatives])[:, None]
    y = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))])
    rng = np.random.default_rng(seed)
    held_out = rng.random(len(y)) < 0.25
    auc = None
    if len(set(y[held_out])) == 2 and len(set(y[~held_out])) == 2:
        probe = LogisticRegression(class_weight="balanced", C=1.0).fit(x[~held_out], y[~held_out])
        auc = float(roc_auc_score(y[held_out], probe.decision_function(x[held_out])))
    model = LogisticRegression(class_weight="balanced", C=1.0).fit(x, y)
    return Calibration(
        source=source,
        fingerprint=fingerprint,
        slope=float(model.coef_[0, 0]),
        intercept=float(model.intercept_[0]),
        positives=ScoreSummary.of(positives),
        negatives=ScoreSummary.of(negatives),
        auc=auc,
        description=description,
    )


def native_calibration() -> Calibration:
    """The model's own absolute reading (a sigmoid link: ``p = sigmoid(score)``) as a calibration."""
    return Calibration("native", "", 1.0, 0.0, description="the model's own sigmoid")


def model_match_probability(model: Any, score: float) -> float | None:
    """``p(match)`` of one pair score by the model's own reading: its sigmoid (an absolute score) or the
    calibration shipped with its weights; None when neither holds (the score alone says nothing absolute)."""
    pair_score = model.pair_score
    if pair_score.absolute:
        return float(pair_score.match_probability(float(score)))
    shipped = getattr(model, "calibration", None)
    if shipped is None or shipped.fingerprint != model.fingerprint or not shipped.informative:
        return None
    return float(shipped.probability(float(score)))


def known_pair_scores(
    image_vecs: np.ndarray,
    caption_vecs: np.ndarray,
    caption_keys: np.ndarray,
    pair_score: Any,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of true pairs and of other pairs from images with known captions.

    Args:
        image_vecs: ``(n, d)`` image embeddings.
        caption_vecs: ``(n, d)`` the embedding of each image's own caption (row-aligned).
        caption_keys: ``(n,)`` an id per caption text: a negative never pairs an image with its own text.
        pair_score: the model's `PairScore`.
        seed: draws of the random negatives.

    Returns:
        ``(positives (n,), negatives)``: each image with its caption; each image with a random other
        image's caption, and with the caption of its most similar other image (a hard negative: the
        captions a near-duplicate image carries are where a score must discriminate).
    """
    n = len(image_vecs)
    rng = np.random.default_rng(seed)
    positives = pair_score.pairs(image_vecs, caption_vecs)
    if n < 2:
        return positives, np.zeros(0)
    others = (np.arange(n) + rng.integers(1, n, size=n)) % n
    nearest = np.empty(n, dtype=np.int64)
    for start in range(0, n, 1024):
        sims = image_vecs[start : start + 1024] @ image_vecs.T
        sims[np.arange(len(sims)), np.arange(start, start + len(sims))] = -np.inf
        nearest[start : start + len(sims)] = np.argmax(sims, axis=1)
    negatives = []
    for partner in (others, nearest):
        keep = caption_keys[partner] != caption_keys
        negatives.append(pair_score.pairs(image_vecs[keep], caption_vecs[partner[keep]]))
    return positives, np.concatenate(negatives)


def self_calibration(
    image_vecs: np.ndarray, caption_vecs: np.ndarray, pair_score: Any, fingerprint: str, seed: int = 0
) -> Calibration:
    """A calibration from the index itself, for indexes without known pairs.

    Each sampled image's best-scoring caption among the index's captions stands for its true description
    (the model's own zero-shot reading) when the reading is mutual (the image is also among the top 5% of
    images for that caption); random (image, caption) pairs stand for the rest. Where the captions cover
    what the images show (a vocabulary of the collection's concepts), the best caption is the true one and
    the line matches a calibration on known pairs.

    It holds only if the readings mean something: the images' best scores must stand clearly above the
    best scores the same images reach among *null* captions (the caption vectors with their dimensions
    shuffled: the same spread of texts, no alignment with the images). An untrained model, or captions
    unrelated to the images, fails that test (measured: the bundled shapes model separates them with
    AUC 1.0, a random tiny open_clip model with 0.17).

    Args:
        image_vecs: ``(n, d)`` a sample of the index's images (``n >= MIN_PAIRS``).
        caption_vecs: ``(m, d)`` the index's captions (or a sample), ``m >= 2``.

    Raises:
        InputError: the readings do not beat the null captions, or too few are mutual.
    """
    rng = np.random.default_rng(seed)
    scores = _pair_scores(pair_score, image_vecs, caption_vecs)
    null = _pair_scores(
        pair_score, image_vecs, np.ascontiguousarray(caption_vecs[:, rng.permutation(caption_vecs.shape[1])])
    )
    best, mutual, null_auc = _readings(scores, null)
    if null_auc < 0.9 or mutual.mean() < 0.25:
        raise InputError(
            f"the model's own readings of the index do not hold (best captions beat null captions with AUC "
            f"{null_auc:.2f}, {mutual.mean():.0%} agree both ways): is the model trained, and do the captions "
            "describe the images?"
        )
    random_pairs = scores[np.arange(len(scores)), rng.integers(0, scores.shape[1], size=len(scores))]
    calibration = fit_calibration(
        best[mutual],
        random_pairs,
        "self",
        fingerprint,
        f"{int(mutual.sum())} of {len(scores)} images whose best caption among {scores.shape[1]} of the "
        "index's agrees both ways",
        seed=seed,
    )
    return dataclasses.replace(
        calibration, extras={"null_auc": null_auc, "mutual_rate": float(mutual.mean())}
    )


def _pair_scores(pair_score: Any, image_vecs: np.ndarray, caption_vecs: np.ndarray) -> np.ndarray:
    """``(n, m)`` pair scores of every image with every caption, 512 images at a time."""
    return np.concatenate(
        [pair_score.matrix(image_vecs[i : i + 512], caption_vecs) for i in range(0, len(image_vecs), 512)]
    )


def _readings(scores: np.ndarray, null: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The model's zero-shot reading of each image and whether it holds: -> (each image's best caption
    score ``(n,)``, which readings are mutual ``(n,)`` (the image is among the top 5 % of images for its
    best caption), and the AUC of the best scores against the best scores among the null captions)."""
    from sklearn.metrics import roc_auc_score

    best_caption = scores.argmax(axis=1)
    best = scores[np.arange(len(scores)), best_caption]
    null_best = null.max(axis=1)
    labels = np.concatenate([np.ones(len(best)), np.zeros(len(null_best))])
    null_auc = float(roc_auc_score(labels, np.concatenate([best, null_best])))
    rank_among_images = (scores[:, best_caption] > best[None, :]).sum(axis=0)
    mutual = rank_among_images < max(1, int(0.05 * len(scores)))
    return best, mutual, null_auc
