"""The target-embedding walk and the MMR ranking, on their own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from counterclip.engine import PathSettings, apply_edit, gradient_path, mmr_order
from counterclip.scores import PairScore


def similarity_objective(text: np.ndarray, scale: float, sign: float = 1.0):
    """``sign * scale * cos(e, text)`` through the one score module."""
    target, score = torch.as_tensor(text), PairScore(scale)
    return lambda e: sign * score.against(e, target)


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_path_follows_the_geodesic_towards_the_text() -> None:
    rng = np.random.default_rng(0)
    e0, t = _unit(rng.normal(size=16)), _unit(rng.normal(size=16))
    path, values = gradient_path(e0, similarity_objective(t, 10.0), PathSettings(steps=10, step_angle=0.05))
    np.testing.assert_allclose(path[0], e0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(path, axis=1), 1.0, atol=1e-5)
    # each step moves exactly step_angle radians, and the score rises monotonically
    angles = np.arccos(np.clip(np.sum(path[1:] * path[:-1], axis=1), -1, 1))
    np.testing.assert_allclose(angles, 0.05, atol=1e-3)
    assert np.all(np.diff(values) > 0)
    # every point lies in the plane spanned by e0 and t (a great circle)
    basis, _ = np.linalg.qr(np.stack([e0, t]).T)
    residual = path - (path @ basis) @ basis.T
    assert np.abs(residual).max() < 1e-4


def test_proximity_penalty_converges_to_the_closed_form() -> None:
    rng = np.random.default_rng(1)
    e0, t = _unit(rng.normal(size=8)), _unit(rng.normal(size=8))
    scale, lam = 10.0, 8.0
    path, _ = gradient_path(
        e0, similarity_objective(t, scale), PathSettings(steps=400, step_angle=0.005, proximity=lam)
    )
    expected = _unit(scale * t + 2 * lam * e0)  # argmax of s*e.t - lam*|e-e0|^2 on the sphere
    assert float(path[-1] @ expected) > np.cos(0.01)


def test_decrease_walks_away() -> None:
    e0, t = _unit([1, 1, 0]), _unit([1, 0, 0])
    path, values = gradient_path(
        e0, similarity_objective(t, 1.0, sign=-1.0), PathSettings(steps=5, step_angle=0.1)
    )
    assert np.all(np.diff(path @ t) < 0)


def test_stop_test_ends_the_walk_after_extra_steps() -> None:
    e0, t = _unit([1, 0, 0]), _unit([0, 1, 0])
    settings = PathSettings(steps=100, step_angle=0.1, extra_steps=2)
    path, values = gradient_path(e0, similarity_objective(t, 1.0), settings, stop=lambda v: v >= 0.5)
    first = int(np.argmax(values >= 0.5))
    assert len(path) == first + 3


def test_apply_edit_renormalises() -> None:
    q, d = _unit([1, 0, 0]), np.array([0, 3.0, 0])
    np.testing.assert_allclose(apply_edit(q, d, 1.0), _unit([1, 3, 0]), atol=1e-6)
    assert np.linalg.norm(apply_edit(q, d, 0.2)) == pytest.approx(1.0)


def test_mmr_order() -> None:
    original = _unit([1, 0, 0])
    candidates = np.stack([_unit([1, 0.1, 0]), _unit([1, 0.11, 0]), _unit([1, 0, 0.3]), _unit([0, 1, 0])])
    relevance = candidates @ original
    assert mmr_order(relevance, candidates, 4, 0.0) == [0, 1, 2, 3]  # pure proximity
    assert mmr_order(relevance, candidates, 2, 0.5) == [0, 2]  # the near-copy of the first is skipped
    assert mmr_order(relevance[:0], candidates[:0], 3, 0.5) == []


def test_distinct_changes_come_before_repeats() -> None:
    # two ways to leave the original: along y (three shades of it) and along z (one, a little further)
    from counterclip.engine.ranking import change_directions

    original = _unit([1, 0, 0])
    candidates = np.stack(
        [_unit([1, 0.30, 0]), _unit([1, 0.31, 0.01]), _unit([1, 0.32, 0]), _unit([1, 0, 0.35])]
    )
    relevance = candidates @ original
    changes = change_directions(original, candidates)
    assert np.allclose(np.linalg.norm(changes, axis=1), 1.0)
    assert mmr_order(relevance, changes, 4, 0.0) == [0, 1, 2, 3]  # closest first
    assert mmr_order(relevance, changes, 4, 0.5)[:2] == [0, 3]  # the other direction second


def test_edited_positions_name_the_changed_words() -> None:
    from counterclip.engine.ranking import edit_features, edited_positions

    original = "a large red circle on the left"
    assert edited_positions(original, "a large blue circle on the left") == {4}  # word 2 ("red")
    assert edited_positions(original, "a large red square on the left") == {6}
    assert edited_positions(original, "a red circle on the left") == {2}  # "large" deleted
    assert edited_positions(original, "a large red circle on the far left") == {11}  # inserted after "the"
    features = edit_features(
        original,
        [
            "a large blue circle on the left",
            "a large green circle on the left",
            "a large red square on the left",
        ],
    )
    sims = features @ features.T
    assert sims[0, 1] == pytest.approx(1.0) and sims[0, 2] == pytest.approx(0.0)


def test_word_edit_distance() -> None:
    from counterclip.engine.ranking import word_edit_distance

    assert word_edit_distance("a large red circle on the left", "a large blue circle on the left") == 1
    assert word_edit_distance("A red circle.", "a red circle") == 0
    assert word_edit_distance("a red circle", "a small red circle on the left") == 4
    assert word_edit_distance("", "a b") == 2


def test_mmr_with_given_relevance() -> None:

    candidates = np.stack([_unit([1, 0.1, 0]), _unit([0, 1, 0]), _unit([1, 0, 0.2])])
    # relevance says the orthogonal candidate is the best: it goes first whatever its cosine
    assert mmr_order(np.array([0.0, 1.0, 0.5]), candidates, 3, 0.0) == [1, 2, 0]
