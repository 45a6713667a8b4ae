"""Calibration: p(match | score) fitted on known pairs, stored as JSON, refused for another model."""

from __future__ import annotations

import numpy as np
import pytest

from counterclip.calibration import (
    Calibration,
    fit_calibration,
    known_pair_scores,
    model_match_probability,
    native_calibration,
    self_calibration,
)
from counterclip.errors import InputError
from counterclip.scores import PairScore


def _separable(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(20.0, 1.0, 400), rng.normal(5.0, 3.0, 1200)


def test_fit_puts_the_match_line_between_the_two_groups() -> None:
    positives, negatives = _separable()
    calibration = fit_calibration(positives, negatives, "captions", "fp", "synthetic")
    line = calibration.score_at(0.5)
    assert 9.0 < line < 17.0  # between the negatives' bulk and the positives' bulk
    assert calibration.auc > 0.99 and calibration.informative
    p = calibration.probability(np.array([0.0, line, 25.0]))
    assert p[0] < 0.01 and p[1] == pytest.approx(0.5, abs=1e-9) and p[2] > 0.99
    assert np.all(np.diff(calibration.probability(np.linspace(-10, 30, 50))) > 0)  # monotone
    assert calibration.positives.p50 == pytest.approx(np.median(positives))
    # balanced classes: drawing three times as many negatives does not move the line much
    more = fit_calibration(positives, np.concatenate([negatives] * 3), "captions", "fp")
    assert abs(more.score_at() - line) < 0.5


def test_uninformative_scores_are_flagged() -> None:
    rng = np.random.default_rng(1)
    same = fit_calibration(rng.normal(0, 1, 300), rng.normal(0, 1, 300), "captions", "fp")
    assert same.auc < 0.65 and not same.informative


def test_json_round_trip_and_bad_input(tmp_path) -> None:
    calibration = fit_calibration(*_separable(), "model", "abc123", "synthetic")
    path = calibration.write(tmp_path / "c.json")
    again = Calibration.read(path)
    assert again == calibration
    np.testing.assert_allclose(again.probability([1.0, 12.0]), calibration.probability([1.0, 12.0]))
    with pytest.raises(InputError, match="not a counterclip calibration"):
        Calibration.from_dict({"slope": 1.0})
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(InputError, match="bad.json"):
        Calibration.read(tmp_path / "bad.json")
    with pytest.raises(InputError, match="another model"):
        calibration.check_model("def456", "bundled:other")
    assert calibration.check_model("abc123") is calibration
    with pytest.raises(InputError, match="at least 20"):
        fit_calibration(np.ones(5), np.zeros(100), "captions", "fp")


def test_native_calibration_is_the_sigmoid() -> None:
    native = native_calibration()
    np.testing.assert_allclose(native.probability([-2.0, 0.0, 3.0]), 1 / (1 + np.exp([2.0, 0.0, -3.0])))
    assert native.check_model("anything") is native  # a model's own reading needs no fingerprint


def test_model_match_probability_is_the_models_own_reading() -> None:
    from types import SimpleNamespace

    line = Calibration("captions", "weights-a", 1.0, -5.0, None, None, 0.99, "hand-made")
    softmax = PairScore(scale=10.0)
    shipped = SimpleNamespace(pair_score=softmax, calibration=line, fingerprint="weights-a")
    assert model_match_probability(shipped, 7.0) == pytest.approx(1 / (1 + np.exp(-2.0)))
    # a calibration of other weights, none at all, or one that does not separate: nothing absolute
    assert model_match_probability(SimpleNamespace(**{**vars(shipped), "fingerprint": "b"}), 7.0) is None
    assert model_match_probability(SimpleNamespace(**{**vars(shipped), "calibration": None}), 7.0) is None
    flat = Calibration("captions", "weights-a", 1.0, -5.0, None, None, 0.55, "poor")
    assert model_match_probability(SimpleNamespace(**{**vars(shipped), "calibration": flat}), 7.0) is None
    sigmoid = SimpleNamespace(pair_score=PairScore(scale=10.0, bias=-10.0, link="sigmoid"), calibration=None)
    assert model_match_probability(sigmoid, -1.0) == pytest.approx(1 / (1 + np.exp(1.0)))


def test_known_pair_scores() -> None:
    rng = np.random.default_rng(2)
    images = rng.normal(size=(30, 8)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    captions = images + 0.1 * rng.normal(size=images.shape).astype(np.float32)
    captions /= np.linalg.norm(captions, axis=1, keepdims=True)
    keys = np.arange(30)
    keys[1] = keys[0]  # images 0 and 1 share a caption text: never a negative of each other
    score = PairScore(10.0)
    positives, negatives = known_pair_scores(images, captions, keys, score)
    np.testing.assert_allclose(positives, 10.0 * np.sum(images * captions, axis=1), rtol=1e-5)
    assert len(negatives) <= 60 and positives.mean() > negatives.mean() + 5


def test_self_calibration_needs_mutual_readings() -> None:
    rng = np.random.default_rng(3)
    score = PairScore(20.0)
    noise = rng.normal(size=(200, 64)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    texts = rng.normal(size=(50, 64)).astype(np.float32)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    with pytest.raises(InputError, match="readings of the index do not hold"):
        self_calibration(noise, texts, score, "fp")  # an untrained model: best captions are noise
    # images that are noisy copies of the captions: each image's best caption is its own, both ways
    owner = rng.integers(0, 50, size=200)
    images = texts[owner] + 0.1 * rng.normal(size=(200, 64)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    calibration = self_calibration(images, texts, score, "fp")
    true = score.pairs(images, texts[owner])
    assert calibration.source == "self" and np.mean(calibration.probability(true) >= 0.5) > 0.9
