"""Pixel-space counterfactual: raises the target, and its saved 8-bit PNG still does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from counterclip.explainers import explain
from counterclip.explainers._core.common import prepare
from counterclip.explainers.pixel_counterfactual import total_variation
from counterclip.report import save_png


def test_total_variation_of_a_step() -> None:
    x = torch.zeros(1, 3, 4, 4)
    x[..., :, 2:] = 1.0  # a vertical edge: 4 of 12 horizontal neighbour pairs differ by 1
    assert float(total_variation(x)) == pytest.approx(4 / 12)


def test_pixel_counterfactual_raises_the_target_and_survives_8_bit(tiny_vit, rgb_images, tmp_path) -> None:
    model, image, text = tiny_vit, rgb_images[1], "a red circle"
    exp = explain(model, image, text, method="pixel-cf", steps=12, lr=0.03)
    trajectory = exp.extras["trajectory"]
    assert trajectory[0] == exp.score and trajectory[-1] > exp.score
    assert exp.extras["verified"] and exp.extras["score_8bit"] > exp.score
    edited = exp.extras["edited_image"]
    path = save_png(edited, tmp_path / "edited.png")
    # Re-score the file from disk through the normal preprocessing.
    reloaded = Image.open(path)
    inputs = prepare(model, reloaded, text)
    with torch.no_grad():
        score = model.logit_scale * float(
            model.image_features(inputs.codec.to_model(inputs.pixels))[0]
            @ model.text_features(inputs.tokens)[0]
        )
    assert score > exp.score
    assert abs(score - exp.extras["score_8bit"]) < 1e-4
    assert np.asarray(reloaded).dtype == np.uint8
    assert exp.pixel_map.shape == (image.height, image.width) and exp.pixel_map.min() >= 0


def test_pixel_counterfactual_can_lower_the_target(tiny_vit, rgb_images) -> None:
    exp = explain(
        tiny_vit, rgb_images[0], "a red circle", method="pixel-cf", steps=20, lr=0.02, direction="decrease"
    )
    assert exp.extras["score_8bit"] < exp.score and exp.extras["verified"]
