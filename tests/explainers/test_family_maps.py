"""Explainers on the families beside CLIP: how a tower's embedding reads its tokens (class token, mean, a
pooling head's attention) in relevance maps, token maps over the text's real positions (SigLIP pads to
its full context and reads the last position; BLIP's BERT reads [CLS]), and the contract every method
keeps on every family (no hook left, model state and weights unchanged)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from family_models import write_tiny_blip, write_tiny_openclip_siglip, write_tiny_siglip, write_tiny_slip
from PIL import Image

from counterclip.explainers import REGISTRY, explain
from counterclip.explainers.relevance import readout_row
from counterclip.models import load_model
from counterclip.models.base import weights_fingerprint
from counterclip.models.towers import TowerInternals

FAMILY_SPECS = ("blip", "siglip", "open_clip_siglip", "slip")
TEXT = "a small blue square on the left"


@pytest.fixture(scope="module")
def family_models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("family_maps")
    write_tiny_slip(root / "slip.pt")
    specs = {
        "blip": f"hf:{write_tiny_blip(root / 'blip')}",
        "siglip": f"hf:{write_tiny_siglip(root / 'siglip')}",
        "open_clip_siglip": write_tiny_openclip_siglip(root / "oc_siglip"),
        "slip": f"slip:{root / 'slip.pt'}",
    }
    return {name: load_model(spec, device="cpu") for name, spec in specs.items()}


@pytest.fixture()
def image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(2).integers(0, 256, size=(40, 56, 3), dtype=np.uint8))


# --- readouts, by hand --------------------------------------------------------------------------------
R = torch.tensor([[1.0, 0.2, 0.4], [0.1, 1.0, 0.3], [0.5, 0.0, 1.0]])


def test_a_token_readout_reads_its_tokens_row() -> None:
    tower = TowerInternals(torch.nn.Identity(), readout="token", readout_token=0)
    assert readout_row(tower, R).tolist() == pytest.approx([1.0, 0.2, 0.4])


def test_a_mean_readout_averages_the_rows_it_pools() -> None:
    tower = TowerInternals(torch.nn.Identity(), readout="mean", pool_from=1)
    assert readout_row(tower, R).tolist() == pytest.approx([0.3, 0.5, 0.65])


def test_a_pool_readout_weights_the_rows_by_the_heads_gradient_weighted_attention() -> None:
    tower = TowerInternals(torch.nn.Identity(), readout="pool", pool=torch.nn.Identity(), pool_from=1)
    probs = torch.tensor([[[[0.25, 0.75]], [[0.5, 0.5]]]])  # (1 image, 2 heads, 1 query, 2 tokens read)
    grads = torch.tensor([[[[2.0, 1.0]], [[-1.0, 2.0]]]])
    # mean over heads of (G * A)^+ : head 1 (0.5, 0.75), head 2 (0, 1.0) -> (0.25, 0.875)
    # row = 0.25 * R[1] + 0.875 * R[2]
    expected = 0.25 * R[1] + 0.875 * R[2]
    torch.testing.assert_close(readout_row(tower, R, probs, grads), expected)


# --- token maps over the real positions -----------------------------------------------------------------
@pytest.mark.parametrize("name", FAMILY_SPECS)
def test_token_maps_cover_the_texts_own_tokens(family_models, image, name) -> None:
    model = family_models[name]
    tokens = model.token_strings(TEXT)
    assert len(tokens) == len(TEXT.split())  # these tokenizers keep the shapes words whole
    relevance = explain(model, image, TEXT, method="relevance", modality="text")
    assert relevance.tokens == tokens and len(relevance.token_map) == len(tokens)
    assert np.all(relevance.token_map >= 0) and relevance.token_map.sum() > 0
    ig = explain(model, image, TEXT, method="ig", modality="text", steps=16)
    assert ig.tokens == tokens
    # Padding and special tokens are the same in the input and the baseline, so they carry no attribution:
    # the shown tokens hold all of it (SigLIP pads to its full context and reads the last position).
    assert ig.token_map.sum() == pytest.approx(ig.extras["attribution_sum"], abs=1e-5)


def test_siglip_integrated_gradients_add_up_to_the_score_change(family_models, image) -> None:
    model = family_models["siglip"]
    ig = explain(model, image, TEXT, method="ig", modality="text", steps=64)
    change = ig.score - ig.extras["baseline_score"]
    assert abs(change) > 1e-3
    # completeness: attributions sum to f(x) - f(baseline), up to the Riemann error Captum reports
    assert ig.extras["attribution_sum"] == pytest.approx(change, abs=abs(ig.extras["delta"]) + 1e-6)
    assert abs(ig.extras["delta"]) < 0.05 * abs(change)


def test_a_pooled_tower_has_relevance_maps_from_its_pooling_attention(family_models, image) -> None:
    for name in ("siglip", "open_clip_siglip"):
        model = family_models[name]
        tower = model.image_tower()
        assert tower.readout == "pool" and tower.pool_recompute is not None
        exp = explain(model, image, TEXT, method="relevance")
        assert exp.patch_map.shape == model.vision_geometry.grid_size
        assert np.all(exp.patch_map >= 0) and exp.patch_map.sum() > 0
        # the map changes when the score it explains changes direction
        other = explain(model, image, [TEXT, "a red circle"], method="relevance", target=None)
        assert not np.allclose(exp.patch_map, other.patch_map)


# --- the contract on every family --------------------------------------------------------------------
def _hook_count(module: torch.nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in module.modules()
    )


@pytest.mark.parametrize("method", ["relevance", "gradcam", "ig", "lime"])
@pytest.mark.parametrize("name", FAMILY_SPECS)
def test_every_method_leaves_no_hook_and_no_change(family_models, image, name, method) -> None:
    model = family_models[name]
    registered = REGISTRY.get(method)
    modality = "both" if "both" in registered.modalities else "image"
    hooks = _hook_count(model.module)
    weights = weights_fingerprint(model.module)
    flags = [p.requires_grad for p in model.module.parameters()]
    model.module.train()
    try:
        exp = explain(model, image, TEXT, method=method, modality=modality, **registered.cheap_options)
        assert all(m.training for m in model.module.modules())  # train mode came back
    finally:
        model.module.eval()
    assert _hook_count(model.module) == hooks
    assert weights_fingerprint(model.module) == weights
    assert [p.requires_grad for p in model.module.parameters()] == flags
    assert all(p.grad is None for p in model.module.parameters())
    assert exp.pixel_map.shape == (image.height, image.width) and np.isfinite(exp.pixel_map).all()
