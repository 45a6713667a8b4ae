"""open_clip and Hugging Face backends on tiny random models written in the test."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import write_tiny_openclip

from counterclip.errors import ModelLoadError
from counterclip.models import ClipModel, load_model, weights_fingerprint

TEXTS = ["a red circle", "a small blue star at the top", "a photo"]


def _check_common_properties(model: ClipModel, rgb_images: list) -> None:
    pixels = model.preprocess_batch(rgb_images)
    assert pixels.shape[1:] == (3, *model.vision_geometry.image_size)
    images = model.encode_images(pixels)
    texts = model.encode_texts(TEXTS)
    assert images.dtype == torch.float32 and images.shape == (3, model.embed_dim)
    assert texts.shape == (3, model.embed_dim)
    np.testing.assert_allclose(images.norm(dim=-1).numpy(), 1.0, atol=1e-5)
    np.testing.assert_allclose(texts.norm(dim=-1).numpy(), 1.0, atol=1e-5)
    # batch equals per-item, and a single input gives a single output
    per_item = torch.stack([model.encode_images(p) for p in pixels])
    np.testing.assert_allclose(per_item.numpy(), images.numpy(), atol=1e-5)
    np.testing.assert_allclose(model.encode_texts(TEXTS[1]).numpy(), texts[1].numpy(), atol=1e-5)
    # the gradient path equals the inference path
    with torch.enable_grad():
        grad_path = model.image_features(pixels.requires_grad_())
    np.testing.assert_allclose(grad_path.detach().numpy(), images.numpy(), atol=1e-5)


def test_open_clip_properties(tiny_openclip: str, rgb_images: list) -> None:
    model = load_model(tiny_openclip, device="cpu")
    assert model.embed_dim == 32 and model.context_length == 16
    assert model.vision_geometry.grid_size == (4, 4)
    assert len(model.image_tower().blocks) == 2 and len(model.text_tower().blocks) == 2
    _check_common_properties(model, rgb_images)
    tokens = model.tokenize(["a red circle"])
    assert int(model.eot_positions(tokens)[0]) == 4  # <sot> a red circle <eot>
    [positions] = model.text_positions(tokens)
    assert positions.pooled == 4 and positions.content == slice(1, 4)
    assert model.token_strings("a red circle") == ["a", "red", "circle"]


def test_open_clip_checkpoint_round_trip(tmp_path, tiny_openclip: str, rgb_images: list) -> None:
    model = load_model(tiny_openclip, device="cpu")
    # save as a .pt state dict (weights only) and as safetensors, reload both
    pt_path = tmp_path / "copy.pt"
    torch.save(model.module.state_dict(), pt_path)
    config = tiny_openclip.split(":")[0]
    reloaded = load_model(f"{config}:{pt_path}", device="cpu")
    assert reloaded.fingerprint == model.fingerprint
    pixels = model.preprocess_batch(rgb_images)
    np.testing.assert_array_equal(reloaded.encode_images(pixels).numpy(), model.encode_images(pixels).numpy())
    np.testing.assert_array_equal(reloaded.encode_texts(TEXTS).numpy(), model.encode_texts(TEXTS).numpy())


def test_fingerprint_changes_with_any_weight(tmp_path, tiny_openclip: str) -> None:
    config, weights = tiny_openclip.split(":")
    state = load_file(weights)
    state["visual.proj"][0, 0] += 1e-3
    changed = tmp_path / "changed.safetensors"
    save_file(state, str(changed))
    original = load_model(tiny_openclip, device="cpu")
    assert load_model(f"{config}:{changed}", device="cpu").fingerprint != original.fingerprint
    # and a differently seeded model of the same architecture differs too
    _, other = write_tiny_openclip(tmp_path / "other", seed=1)
    assert load_model(f"{config}:{other}", device="cpu").fingerprint != original.fingerprint
    assert weights_fingerprint(original.module) == original.fingerprint


def test_hf_properties_and_oracle(tiny_hf_dir, rgb_images: list) -> None:
    model = load_model(f"hf:{tiny_hf_dir}", device="cpu")
    assert model.embed_dim == 24 and model.vision_geometry.grid_size == (4, 4)
    _check_common_properties(model, rgb_images)
    # oracle: CLIPModel's own logits_per_image for the same inputs
    pixels = model.preprocess_batch(rgb_images)
    tokens = model.tokenize(TEXTS)
    with torch.no_grad():
        expected = model.module(input_ids=tokens, pixel_values=pixels).logits_per_image
    ours = model.score(model.encode_images(pixels), model.encode_texts(TEXTS))
    np.testing.assert_allclose(ours.numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)


def test_hf_local_dir_round_trip(tmp_path, tiny_hf_dir, rgb_images: list) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_hf_dir, copy)
    a = load_model(f"hf:{tiny_hf_dir}", device="cpu")
    b = load_model(f"local-dir:{copy}", device="cpu")
    assert a.fingerprint == b.fingerprint
    pixels = a.preprocess_batch(rgb_images)
    np.testing.assert_array_equal(a.encode_images(pixels).numpy(), b.encode_images(pixels).numpy())


def test_errors(tmp_path, tiny_openclip: str) -> None:
    config = tiny_openclip.split(":")[0]
    with pytest.raises(ModelLoadError, match="unknown open_clip architecture 'ViT-Q-99'"):
        load_model("ViT-Q-99", device="cpu")
    with pytest.raises(ModelLoadError, match="checkpoint file not found"):
        load_model(f"{config}:{tmp_path / 'missing.safetensors'}", device="cpu")
    with pytest.raises(ModelLoadError, match="does not fit architecture"):
        load_model(f"RN50:{tiny_openclip.split(':')[1]}", device="cpu")
    with pytest.raises(ModelLoadError, match="unknown pretrained tag 'nope'"):
        load_model("ViT-B-32:nope", device="cpu")
    with pytest.raises(ModelLoadError, match="bundled:shapes"):  # offline hub: names the way out
        load_model("hf:openai/clip-vit-base-patch32", device="cpu")
    with pytest.raises(ModelLoadError, match="no bundled model named 'nothing'"):
        load_model("bundled:nothing", device="cpu")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        (tmp_path / "bad.json").write_text("{")
        load_model(f"{tmp_path / 'bad.json'}", device="cpu")
