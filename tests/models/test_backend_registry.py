"""The backend registry: a registered scheme parses, round-trips and loads through `load_model`."""

from __future__ import annotations

import pytest
import torch

from counterclip.errors import ModelLoadError
from counterclip.models import ModelSpec, load_model, parse_model_spec, register_backend
from counterclip.models.registry import backend_names, unregister_backend


@pytest.fixture()
def fake_scheme(tiny_openclip: str):
    """A backend ``fake:NAME`` whose loader builds the tiny open_clip model and remembers its calls."""
    calls: list[tuple[ModelSpec, torch.device]] = []

    def loader(spec: ModelSpec, device: torch.device):
        calls.append((spec, device))
        return load_model(tiny_openclip, device=device)

    register_backend("fake", loader, source=lambda rest: "made-up", example="fake:tiny")
    try:
        yield calls
    finally:
        unregister_backend("fake")


def test_a_registered_scheme_parses_and_loads(fake_scheme, tiny_openclip: str) -> None:
    spec = parse_model_spec("fake:tiny-one")
    assert (spec.backend, spec.name, spec.source) == ("fake", "tiny-one", "made-up")
    assert str(spec) == "fake:tiny-one" and parse_model_spec(str(spec)) == spec
    assert ModelSpec.from_json(spec.to_json()) == spec
    model = load_model("fake:tiny-one", device="cpu")
    assert fake_scheme == [(spec, torch.device("cpu"))]
    assert model.fingerprint == load_model(tiny_openclip, device="cpu").fingerprint
    with pytest.raises(ModelLoadError, match="e.g. fake:tiny"):
        parse_model_spec("fake:")


def test_the_builtin_backends_are_registered_and_names_are_unique() -> None:
    assert backend_names()[:3] == ("open_clip", "hf", "bundled")
    with pytest.raises(ValueError, match="already registered"):
        register_backend("hf", "somewhere:else")
    with pytest.raises(ModelLoadError, match="unknown model backend 'fake'"):
        ModelSpec("fake", "x")  # not registered outside the fixture


def test_a_scheme_without_its_backend_stays_an_open_clip_spec() -> None:
    # "fake:x" is an architecture "fake" with a pretrained tag "x" when no backend "fake" is registered.
    spec = parse_model_spec("fake:x")
    assert (spec.backend, spec.name, spec.pretrained) == ("open_clip", "fake", "x")
