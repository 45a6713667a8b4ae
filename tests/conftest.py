"""Shared fixtures: seeding, and tiny CLIP models built in the test (no weights are ever downloaded)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import write_tiny_hf_clip, write_tiny_openclip

# Never touch the network from tests: the hub clients fail fast instead of retrying for a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    """Every test starts from the same random state."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_openclip(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Model spec string of a tiny random open_clip ViT (config JSON + safetensors checkpoint)."""
    config, weights = write_tiny_openclip(tmp_path_factory.mktemp("tiny_openclip"))
    return f"{config}:{weights}"


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny random Hugging Face CLIPModel directory."""
    return write_tiny_hf_clip(tmp_path_factory.mktemp("tiny_hf"))


@pytest.fixture()
def rgb_images() -> list:
    """Three small seeded RGB PIL images of different sizes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
        for h, w in ((40, 48), (32, 32), (64, 50))
    ]
