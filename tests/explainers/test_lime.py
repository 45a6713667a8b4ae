"""LIME: a black box that depends on one superpixel ranks it first; model-backed runs give full maps."""

from __future__ import annotations

import numpy as np

from counterclip.explainers import explain
from counterclip.explainers.lime_explainers import grid_segments, lime_image_weights


def test_grid_segments() -> None:
    segments = grid_segments(8, 12, (2, 3))
    assert segments.shape == (8, 12)
    assert segments[0, 0] == 0 and segments[0, 11] == 2 and segments[7, 0] == 3 and segments[7, 11] == 5
    assert np.bincount(segments.reshape(-1)).tolist() == [16] * 6


def test_black_box_on_one_superpixel_ranks_it_first() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(100, 256, size=(32, 32, 3), dtype=np.uint8)
    segments = grid_segments(32, 32, (4, 4))
    chosen = 11

    def score_fn(batch: np.ndarray) -> np.ndarray:
        return batch[:, segments == chosen].mean(axis=(1, 2)) / 255.0

    weights, r2 = lime_image_weights(image, score_fn, segments, num_samples=200, hide_color=0.0, seed=0)
    assert int(np.argmax(weights)) == chosen
    assert np.abs(np.delete(weights, chosen)).max() < 0.05 * weights[chosen]
    assert r2 > 0.99


def test_image_and_text_lime_on_a_tiny_model(tiny_vit, rgb_images) -> None:
    exp = explain(tiny_vit, rgb_images[0], "a red circle", method="lime", modality="both", num_samples=64)
    assert exp.pixel_map.shape == (rgb_images[0].height, rgb_images[0].width)
    assert exp.patch_map.shape == (4, 4)
    # One weight per grid cell, painted over the cell: the pooled map has exactly 16 distinct values.
    assert exp.extras["segments"] == 16
    assert exp.tokens == ["a", "red", "circle"] and exp.token_map.shape == (3,)
    assert exp.forward_passes >= 2
