"""Integrated gradients: completeness against an independently computed score difference."""

from __future__ import annotations

import pytest
import torch

from counterclip.explainers import LabelProbability, explain
from counterclip.explainers._core.common import prepare
from counterclip.explainers.integrated_gradients import text_baseline


def test_image_ig_completeness(tiny_vit, rgb_images) -> None:
    model, image, text = tiny_vit, rgb_images[0], "a red circle"
    exp = explain(model, image, text, method="ig", steps=64)
    inputs = prepare(model, image, text)
    with torch.no_grad():
        text_emb = model.text_features(inputs.tokens)
        image_emb = model.image_features(inputs.codec.to_model(inputs.pixels))
        black_emb = model.image_features(inputs.codec.to_model(torch.zeros_like(inputs.pixels)))
    expected = model.logit_scale * float((image_emb - black_emb) @ text_emb[0])
    total = exp.extras["attribution_sum"]
    assert abs(total - expected) <= abs(exp.extras["delta"]) + 1e-4
    assert abs(exp.extras["delta"]) < 0.05 * abs(expected) + 1e-3
    # The pixel map sums the channels; at the model's size it carries the whole attribution.
    assert exp.patch_map.mean() * exp.patch_map.size * 64 == pytest.approx(total, rel=1e-3, abs=1e-4)


def test_text_ig_completeness_and_baseline_keeps_end_of_text(tiny_vit, rgb_images) -> None:
    model, image, text = tiny_vit, rgb_images[1], "a large red circle"
    inputs = prepare(model, image, text)
    baseline = text_baseline(model, inputs.tokens)
    eot = int(model.eot_positions(inputs.tokens)[0])
    assert int(model.eot_positions(baseline)[0]) == eot
    assert baseline[0, 0] == inputs.tokens[0, 0] and baseline[0, eot] == inputs.tokens[0, eot]
    exp = explain(model, image, text, method="ig", modality="text", steps=64)
    with torch.no_grad():
        image_emb = model.image_features(inputs.codec.to_model(inputs.pixels))
        diff = model.text_features(inputs.tokens) - model.text_features(baseline)
    expected = model.logit_scale * float(image_emb[0] @ diff[0])
    assert exp.tokens == ["a", "large", "red", "circle"]
    assert abs(exp.extras["attribution_sum"] - expected) <= abs(exp.extras["delta"]) + 1e-4
    assert abs(exp.extras["delta"]) < 0.05 * abs(expected) + 1e-3
    # Only content tokens differ from the baseline, so their attributions carry the whole difference.
    assert float(exp.token_map.sum()) == pytest.approx(exp.extras["attribution_sum"], abs=1e-4)


def test_ig_on_a_label_probability_target(tiny_hf, rgb_images) -> None:
    labels = ["a red circle", "a blue square", "a green star"]
    exp = explain(tiny_hf, rgb_images[0], labels, method="ig", target=LabelProbability(1, tiny_hf.pair_score))
    assert 0.0 < exp.score < 1.0
    assert (
        abs(exp.extras["attribution_sum"] - (exp.score - exp.extras["baseline_score"]))
        <= abs(exp.extras["delta"]) + 1e-5
    )
