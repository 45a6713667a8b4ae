"""Model spec parsing and its JSON round trip."""

from __future__ import annotations

import pytest

from counterclip.errors import ModelLoadError
from counterclip.models import ModelSpec, parse_model_spec


@pytest.mark.parametrize(
    ("text", "backend", "name", "pretrained", "source"),
    [
        ("bundled:shapes", "bundled", "shapes", None, "bundled"),
        ("hf:openai/clip-vit-base-patch32", "hf", "openai/clip-vit-base-patch32", None, "hub"),
        ("hf-hub:laion/CLIP-ViT-B-32", "open_clip", "laion/CLIP-ViT-B-32", None, "hub"),
        ("ViT-B-32", "open_clip", "ViT-B-32", None, "random"),
        ("ViT-B-32:laion2b_s34b_b79k", "open_clip", "ViT-B-32", "laion2b_s34b_b79k", "tag"),
        ("ViT-B-32:/ckpt/w.pt", "open_clip", "ViT-B-32", "/ckpt/w.pt", "local"),
        ("RN50:weights.safetensors", "open_clip", "RN50", "weights.safetensors", "local"),
        ("arch.json:./w.bin", "open_clip", "arch.json", "./w.bin", "local"),
    ],
)
def test_parse_forms(text: str, backend: str, name: str, pretrained: str | None, source: str) -> None:
    spec = parse_model_spec(text)
    assert (spec.backend, spec.name, spec.pretrained, spec.source) == (backend, name, pretrained, source)
    # the string form parses back to the same spec
    assert parse_model_spec(str(spec)) == spec


def test_local_dir_detects_backend(tmp_path) -> None:
    (tmp_path / "oc").mkdir()
    (tmp_path / "oc" / "open_clip_config.json").write_text("{}")
    assert parse_model_spec(f"local-dir:{tmp_path / 'oc'}").backend == "open_clip"
    assert parse_model_spec(f"local-dir:{tmp_path}").backend == "hf"
    assert parse_model_spec(f"hf:{tmp_path}").source == "local"


def test_json_round_trip() -> None:
    spec = parse_model_spec("ViT-B-32:laion2b_s34b_b79k")
    assert ModelSpec.from_json(spec.to_json()) == spec
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert parse_model_spec(spec.to_dict()) == spec


def test_bad_specs() -> None:
    with pytest.raises(ModelLoadError, match="empty model spec"):
        parse_model_spec("  ")
    with pytest.raises(ModelLoadError, match="unknown field"):
        ModelSpec.from_dict({"backend": "hf", "name": "x", "colour": "red"})
    with pytest.raises(ModelLoadError, match="unknown model backend"):
        ModelSpec("tensorflow", "x")
