"""Portable model specs: relative paths resolved when the index is built, so it opens from any working
directory; a moved model directory is an error naming the recorded path and how to point to the new one;
pointing to it is accepted only for the same weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tiny_models import write_tiny_hf_clip, write_tiny_openclip

from counterclip.cli import run
from counterclip.engine import Engine
from counterclip.errors import ModelLoadError
from counterclip.index_builder import Index
from counterclip.models import parse_model_spec


@pytest.fixture()
def relative_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An index built from ``tmp_path`` with ``--model hf:clipdir`` (a relative directory)."""
    from counterclip.shapes import generate_folder

    generate_folder(tmp_path / "shapes", n=8, seed=2, size=48)
    write_tiny_hf_clip(tmp_path / "clipdir")
    monkeypatch.chdir(tmp_path)
    assert (
        run(["build", "shapes", "--index", "idx", "--model", "hf:clipdir", "--device", "cpu", "--json"]) == 0
    )
    return tmp_path


def test_relative_paths_are_resolved_when_parsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, weights = write_tiny_openclip(tmp_path / "oc")
    monkeypatch.chdir(tmp_path)
    spec = parse_model_spec("oc/cc-tiny-vit.json:oc/cc-tiny-vit-seed0.safetensors")
    assert (spec.name, spec.pretrained, spec.source) == (str(config), str(weights), "local")
    assert parse_model_spec("ViT-B-32:laion2b_s34b_b79k").pretrained == "laion2b_s34b_b79k"  # a tag stays
    assert (
        parse_model_spec("hf:openai/clip-vit-base-patch32").name == "openai/clip-vit-base-patch32"
    )  # hub id


def test_an_index_built_with_a_relative_spec_opens_from_anywhere(
    relative_build: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    manifest = json.loads((relative_build / "idx" / "manifest.json").read_text())
    assert manifest["model"]["spec"]["name"] == str(relative_build / "clipdir")
    elsewhere = relative_build / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert run(["search", str(relative_build / "idx"), "--text", "a red circle", "-k", "2", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["items"]) == 2
    with Engine.open(relative_build / "idx", device="cpu") as engine:
        assert engine.model.spec.name == str(relative_build / "clipdir")


def test_a_moved_model_is_named_and_can_be_pointed_to(relative_build: Path, capsys) -> None:
    index, old, new = relative_build / "idx", relative_build / "clipdir", relative_build / "moved" / "clip"
    new.parent.mkdir()
    shutil.move(old, new)
    with pytest.raises(ModelLoadError) as caught:
        Engine.open(index, device="cpu")
    message = str(caught.value)
    assert message.startswith(f"the model files {old} recorded in index {index} for hf:{old} are not there")
    assert f"`counterclip update {index} --model SPEC`" in message and "Engine.open(" in message
    assert run(["search", str(index), "--text", "a red circle"]) == 2
    assert f"the model files {old} recorded" in capsys.readouterr().err
    # pointing to the new place: used once by Engine.open, recorded by update
    with Engine.open(index, device="cpu", model=f"hf:{new}") as engine:
        stored = engine.index.images.vectors(engine.index.images.ids[:1])[0]
        fresh = engine.resolve_image(
            engine.index.images.meta(engine.index.images.ids[:1])[0]["abs_path"]
        ).vector
        assert float(stored @ fresh) >= 0.99999
    assert run(["update", str(index), "--model", f"hf:{new}", "--device", "cpu", "--json"]) == 0
    capsys.readouterr()
    with Index.open(index) as idx:
        assert idx.model_spec.name == str(new)
    with Engine.open(index, device="cpu") as engine:
        assert engine.model.spec.name == str(new)


def test_pointing_to_other_weights_is_refused(relative_build: Path) -> None:
    other = write_tiny_hf_clip(relative_build / "other", seed=3)
    with pytest.raises(ModelLoadError, match=r"loads other weights \(fingerprint \w+\) than the model index"):
        Engine.open(relative_build / "idx", device="cpu", model=f"hf:{other}")
    with Index.open(relative_build / "idx") as idx:
        assert np.isfinite(idx.images.vectors(idx.images.ids)).all()  # untouched
