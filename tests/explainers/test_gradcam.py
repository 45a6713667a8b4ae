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
        score = (
            model.logit_scale
            * (model.image_features(inputs.codec.to_model(inputs.pixels)) @ text_emb.T)[0, 0]
        )
        (grad,) = torch.autograd.grad(score, store["a"])
    finally:
        handle.remove()
    weights = grad.mean(dim=(2, 3), keepdim=True)
    expected = torch.relu((weights * store["a"]).sum(dim=1))[0].detach().numpy()
    assert exp.patch_map.shape == expected.shape == (4, 4)
    np.testing.assert_allclose(exp.patch_map, expected, rtol=1e-4, atol=1e-7)
    assert exp.pixel_map.shape == (image.height, image.width)


def test_relevance_on_a_conv_tower_is_a_clear_error(tiny_resnet, rgb_images) -> None:
    with pytest.raises(InputError, match="ViT"):
        explain(tiny_resnet, rgb_images[0], "x", method="relevance")


def test_unknown_option_raises(tiny_vit, rgb_images) -> None:
    with pytest.raises(InputError, match="unknown option"):
        explain(tiny_vit, rgb_images[0], "x", method="gradcam", blocks=2)
