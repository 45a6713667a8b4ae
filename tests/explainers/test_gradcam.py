"""Grad-CAM: token-Grad-CAM on the one-patch ViT, Captum LayerGradCam on a tiny ResNet tower vs a manual one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from clip_doubles import OnePatchModel, patch_image

from counterclip.errors import InputError
from counterclip.explainers import default_layer, explain, list_layers
from counterclip.explainers._core.common import prepare

TINY_RESNET_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_resnet(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random open_clip ModifiedResNet CLIP, loaded through the normal spec path."""
    import open_clip
    from safetensors.torch import save_file

    from counterclip.models import load_model
    from counterclip.models.open_clip_backend import register_config_file

    directory = tmp_path_factory.mktemp("tiny_resnet")
    config = directory / "cc-tiny-rn.json"
    config.write_text(json.dumps(TINY_RESNET_CONFIG))
    torch.manual_seed(0)
    module = open_clip.create_model(register_config_file(config))
    weights = directory / "cc-tiny-rn.safetensors"
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(weights))
    return load_model(f"{config}:{weights}", device="cpu")


def test_token_gradcam_peaks_on_the_only_patch_the_score_depends_on(one_patch_model: OnePatchModel) -> None:
    # The object (bright patch) is where the model looks, on a dark background: the usual Grad-CAM setting.
    exp = explain(
        one_patch_model, patch_image(one_patch_model.patch, background="dark"), "x", method="gradcam"
    )
    assert int(np.argmax(exp.patch_map)) == one_patch_model.patch
    assert exp.extras["layer"] == "blocks.0"
    others = np.delete(exp.patch_map.reshape(-1), one_patch_model.patch)
    assert others.max() < 0.5 * exp.patch_map.max()


def test_vit_layers_are_the_blocks(tiny_vit) -> None:
    assert list_layers(tiny_vit) == ["transformer.resblocks.0", "transformer.resblocks.1"]
    assert default_layer(tiny_vit) == "transformer.resblocks.1"
    with pytest.raises(InputError, match="no layer named"):
        explain(tiny_vit, patch_image(0), "x", method="gradcam", layer="nope")


def _manual_token_maps(model, image, text) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
    """Pre-attention LayerNorm outputs of every vision block and the pair score's gradients (hooks by hand)."""
    inputs = prepare(model, image, text)
    outputs: list[torch.Tensor] = []
    handles = [
        block.ln_1.register_forward_hook(lambda m, i, o: outputs.append(o))
        for block in model.module.visual.transformer.resblocks
    ]
    try:
        with torch.no_grad():
            text_emb = model.text_features(inputs.tokens)
        pixels = inputs.codec.to_model(inputs.pixels).clone().requires_grad_(True)
        score = model.pair_score.matrix(model.image_features(pixels), text_emb)[0, 0]
        grads = torch.autograd.grad(score, outputs)
    finally:
        for handle in handles:
            handle.remove()
    # open_clip blocks may run sequence-first (L, n, D): bring the batch first
    to_batch_first = (lambda t: t) if outputs[0].shape[0] == 1 else (lambda t: t.transpose(0, 1))
    prefix = model.vision_geometry.num_prefix_tokens
    return [to_batch_first(o).detach() for o in outputs], [to_batch_first(g) for g in grads], prefix


def test_vit_hirescam_over_all_blocks_matches_a_manual_computation(tiny_vit, rgb_images) -> None:
    image, text = rgb_images[1], "a green square"
    exp = explain(tiny_vit, image, text, method="gradcam")
    assert exp.extras["rule"] == "hirescam"
    assert exp.extras["layer"] == "transformer.resblocks.0+transformer.resblocks.1"
    acts, grads, prefix = _manual_token_maps(tiny_vit, image, text)
    expected = sum(
        torch.relu((a[0, prefix:] * g[0, prefix:]).sum(-1)) for a, g in zip(acts, grads, strict=True)
    )
    grid = tiny_vit.vision_geometry.grid_size
    np.testing.assert_allclose(exp.patch_map, expected.reshape(grid).numpy(), rtol=1e-4, atol=1e-6)
    assert exp.patch_map.max() > 0


def test_vit_classic_gradcam_on_one_block_matches_a_manual_computation(tiny_vit, rgb_images) -> None:
    image, text = rgb_images[1], "a green square"
    exp = explain(tiny_vit, image, text, method="gradcam", rule="gradcam", layer="transformer.resblocks.1")
    acts, grads, prefix = _manual_token_maps(tiny_vit, image, text)
    a, g = acts[1][0, prefix:], grads[1][0, prefix:]
    expected = torch.relu(a @ g.mean(dim=0))  # channel weights: the gradient averaged over patch tokens
    grid = tiny_vit.vision_geometry.grid_size
    np.testing.assert_allclose(exp.patch_map, expected.reshape(grid).numpy(), rtol=1e-4, atol=1e-6)
    last = explain(tiny_vit, image, text, method="gradcam", rule="gradcam", blocks=1)
    np.testing.assert_allclose(last.patch_map, exp.patch_map, rtol=1e-6)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rule": "gradcam++"}, "rule must be one of"),
        ({"layer": "transformer.resblocks.1", "blocks": 1}, "not both"),
        ({"blocks": 0}, "at least 1"),
    ],
)
def test_bad_gradcam_options_are_clear_errors(tiny_vit, rgb_images, options, message) -> None:
    with pytest.raises(InputError, match=message):
        explain(tiny_vit, rgb_images[0], "x", method="gradcam", **options)


def test_resnet_layer_gradcam_matches_a_manual_gradcam(tiny_resnet, rgb_images) -> None:
    model = tiny_resnet
    assert default_layer(model) == "layer4"
    assert "layer3" in list_layers(model)
    image, text = rgb_images[2], "a red circle"
    exp = explain(model, image, text, method="gradcam", layer="layer3")
    # Manual Grad-CAM: channel weights = spatial mean of the gradient, relu(sum_c w_c A_c).
    inputs = prepare(model, image, text)
    store = {}
    handle = model.module.visual.layer3.register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    try:
        with torch.no_grad():
            text_emb = model.text_features(inputs.tokens)
        score = model.pair_score.matrix(model.image_features(inputs.codec.to_model(inputs.pixels)), text_emb)[
            0, 0
        ]
        (grad,) = torch.autograd.grad(score, store["a"])
    finally:
        handle.remove()
    weights = grad.mean(dim=(2, 3), keepdim=True)
    expected = torch.relu((weights * store["a"]).sum(dim=1))[0].detach().numpy()
    assert exp.patch_map.shape == expected.shape == (4, 4)
    np.testing.assert_allclose(exp.patch_map, expected, rtol=1e-4, atol=1e-7)
    assert exp.pixel_map.shape == (image.height, image.width)
    assert exp.extras["rule"] == "gradcam"  # the conv default
    hires = explain(model, image, text, method="gradcam", layer="layer3", rule="hirescam")
    products = torch.relu((grad * store["a"]).sum(dim=1))[0].detach().numpy()
    np.testing.assert_allclose(hires.patch_map, products, rtol=1e-4, atol=1e-7)
    with pytest.raises(InputError, match="ViT"):
        explain(model, image, text, method="gradcam", blocks=2)


def test_relevance_on_a_conv_tower_is_a_clear_error(tiny_resnet, rgb_images) -> None:
    with pytest.raises(InputError, match="ViT"):
        explain(tiny_resnet, rgb_images[0], "x", method="relevance")


def test_unknown_option_raises(tiny_vit, rgb_images) -> None:
    with pytest.raises(InputError, match="unknown option"):
        explain(tiny_vit, rgb_images[0], "x", method="gradcam", steps=2)
