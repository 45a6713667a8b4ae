"""The bundled shapes CLIP: a plain open_clip checkpoint that loads offline and has really learned colour."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from safetensors import safe_open

from counterclip.models import bundled_dir, load_model
from counterclip.shapes import evaluate_model

BUNDLED = bundled_dir("shapes")
CONFIG, WEIGHTS = BUNDLED / "config.json", BUNDLED / "weights.safetensors"
# sha256-based fingerprint of the shipped weights (see counterclip.models.weights_fingerprint); update it
# only together with a retrained weights file.
GOLDEN_FINGERPRINT: str | None = "bf266d9c85d6f81a8d246564311dbcf8"

pytestmark = pytest.mark.skipif(not WEIGHTS.is_file(), reason="bundled weights not trained yet")


@pytest.fixture(scope="module")
def bundled():
    """The bundled model, loaded once for this module (about a second)."""
    return load_model("bundled:shapes", device="cpu")


def test_config_is_a_bare_open_clip_config() -> None:
    config = json.loads(CONFIG.read_text())
    assert set(config) == {"embed_dim", "vision_cfg", "text_cfg"}
    vision = config["vision_cfg"]
    assert vision["image_size"] // vision["patch_size"] == 8  # an 8 x 8 grid, for attribution maps


def test_weights_file_is_small_fp16_with_exact_open_clip_keys() -> None:
    assert WEIGHTS.stat().st_size <= 15 * 1024 * 1024
    expected = open_clip.model.CLIP(**json.loads(CONFIG.read_text())).state_dict()
    with safe_open(str(WEIGHTS), framework="pt") as fh:
        keys = set(fh.keys())
        assert keys == set(expected)
        for key in keys:
            tensor = fh.get_tensor(key)
            assert tensor.dtype == torch.float16, key
            assert tensor.shape == expected[key].shape, key


def test_loads_offline_with_stable_fingerprint(bundled) -> None:
    assert bundled.embed_dim == 128 and bundled.vision_geometry.grid_size == (8, 8)
    assert load_model("bundled:shapes", device="cpu").fingerprint == bundled.fingerprint
    if GOLDEN_FINGERPRINT is not None:
        assert bundled.fingerprint == GOLDEN_FINGERPRINT


def test_really_learned_the_shapes_world(bundled) -> None:
    # A random model is near chance (shape 1/5, colour 1/6, position 1/5); the shipped one is far above it.
    metrics = evaluate_model(bundled, n=60, seed=123, heldout_n=0)
    zero_shot = metrics["seen"]["zero_shot"]
    assert zero_shot["shape"] >= 0.9, metrics
    assert zero_shot["colour"] >= 0.9, metrics
    assert zero_shot["size"] >= 0.85, metrics
    assert zero_shot["position"] >= 0.9, metrics
    assert zero_shot["background"] >= 0.85, metrics
