"""Pixel counterfactual for a classifier: reaches class B, verified after 8-bit rounding, input untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from classic_doubles import TinyCnn, planted_detector_cnn
from PIL import Image

from counterclip.errors import InputError
from counterclip.explainers.classic import pixel_counterfactual

IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def test_counterfactual_reaches_target_and_is_verified_from_the_saved_image(tiny_cnn: TinyCnn) -> None:
    with torch.no_grad():  # default init makes logits nearly constant; larger weights make classes reachable
        for parameter in tiny_cnn.parameters():
            parameter.mul_(4.0)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8))
    with torch.no_grad():
        logits = tiny_cnn.eval()(_pixels(image))[0]
    source, goal = int(logits.argmax()), int(logits.argmin())
    tiny_cnn.train()
    result = pixel_counterfactual(
        tiny_cnn, image, target_class=goal, steps=100, learning_rate=0.02, proximity=1.0, **IDENTITY
    )
    assert tiny_cnn.training  # the caller's mode is restored (it was set to train above)
    assert all(parameter.grad is None for parameter in tiny_cnn.parameters())  # no .grad left on the model
    extras = result.extras
    assert extras["verified"] and extras["source_class"] == source and extras["target_class"] == goal
    edited = extras["edited_image"]
    with torch.no_grad():  # re-classify the 8-bit image independently, as a user would after saving it
        assert int(tiny_cnn.eval()(_pixels(edited)).argmax()) == goal
    trajectory = extras["trajectory"]
    assert len(trajectory["p_target"]) == extras["steps_taken"] + 1  # the verified step is recorded too
    assert trajectory["p_target"][0] == pytest.approx(float(torch.softmax(logits, 0)[goal]), abs=1e-6)
    assert trajectory["p_target"][-1] > trajectory["p_source"][-1]
    difference = np.abs(np.asarray(edited, dtype=np.float64) - np.asarray(image, dtype=np.float64)) / 255.0
    np.testing.assert_allclose(result.pixel_map, difference.sum(axis=2), atol=1e-6)
    assert extras["linf_levels"] == int(np.abs(np.asarray(edited, int) - np.asarray(image, int)).max())
    assert result.forward_passes >= extras["steps_taken"] and result.backward_passes == extras["steps_taken"]


def test_counterfactual_adds_the_planted_feature() -> None:
    """The detector's class 1 needs a bright red patch: the edit must put red where it helps most."""
    model = planted_detector_cnn()
    with torch.no_grad():
        model.classifier.bias[0] = 0.5  # class 0 wins on a plain image
    pixels = torch.full((1, 3, 12, 12), 0.45)  # just above the detector's threshold, so gradients flow
    before = pixels.clone()
    result = pixel_counterfactual(
        model, pixels, target_class=1, steps=100, learning_rate=0.05, proximity=0.1, **IDENTITY
    )
    assert torch.equal(pixels, before)
    assert result.extras["verified"] and result.extras["source_class"] == 0
    edited = np.asarray(result.extras["edited_image"], dtype=np.float64) / 255.0
    change = edited - 0.45
    assert change[..., 0].sum() > 10 * np.abs(change[..., 1:]).sum()  # red went up; green/blue barely moved


def test_counterfactual_rejects_bad_classes(tiny_cnn: TinyCnn) -> None:
    with pytest.raises(InputError, match="target class 7 is out of range"):
        pixel_counterfactual(tiny_cnn, torch.rand(1, 3, 8, 8), target_class=7, **IDENTITY)


def _pixels(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
