"""Fixtures for the CLIP explainer tests: the one-patch ViT double and loaded tiny models."""

from __future__ import annotations

import pytest
from clip_doubles import OnePatchModel

from counterclip.models.base import ClipModel


@pytest.fixture()
def one_patch_model() -> OnePatchModel:
    """The one-patch ViT double, attending to patch 6 (row 1, column 2)."""
    return OnePatchModel(patch=6)


@pytest.fixture(scope="session")
def tiny_vit(tiny_openclip: str) -> ClipModel:
    """The tiny random open_clip ViT, loaded once."""
    from counterclip.models import load_model

    return load_model(tiny_openclip, device="cpu")


@pytest.fixture(scope="session")
def tiny_hf(tiny_hf_dir) -> ClipModel:
    """The tiny random Hugging Face CLIPModel, loaded once."""
    from counterclip.models import load_model

    return load_model(f"hf:{tiny_hf_dir}", device="cpu")
