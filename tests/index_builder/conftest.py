"""Fixtures for the index-builder tests: one tiny model per module, folders, a second model."""

from __future__ import annotations

import pytest

from counterclip.models import load_model


@pytest.fixture(scope="module")
def model(tiny_openclip: str):
    """The tiny open_clip model, loaded once per test module."""
    return load_model(tiny_openclip, device="cpu")
