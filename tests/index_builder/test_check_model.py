"""`counterclip check IDX --model`: a sample of indexed files re-encoded with the index's model, the lowest
and median cosine to the stored vectors reported; below the stored-vector line it is an error naming the
files (a preprocessing that changed under the index: another library version, another transform)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from counterclip.cli import run
from counterclip.index_builder import Index, build_index
from counterclip.index_builder.parity import check_model
from counterclip.models.open_clip_backend import OpenClipModel


@pytest.fixture(scope="module")
def index(tmp_path_factory, model) -> Path:
    from counterclip.shapes import generate_folder

    root = tmp_path_factory.mktemp("check_model")
    generate_folder(root / "shapes", n=12, seed=6, size=64)
    build_index(root / "shapes", root / "idx", model=model, progress=False)
    return root / "idx"


def _measured(index: Path, model) -> np.ndarray:
    """Every file's cosine of a fresh encode to its stored vector, computed here."""
    with Index.open(index) as idx:
        metas = idx.images.meta(idx.images.ids)
        stored = idx.images.vectors(idx.images.ids)
        fresh = model.encode_pil([idx.load_image(m["abs_path"]).model_input for m in metas]).numpy()
    return (stored * fresh).sum(axis=1)


def test_check_model_reports_the_lowest_and_median_cosine(index: Path, model, capsys) -> None:
    cosines = _measured(index, model)
    assert run(["check", str(index), "--model", "--json", "--device", "cpu"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert not payload["damaged"]
    figures = payload["model_check"]["agreement"]
    assert figures["samples"] == 12 and figures["bound"] == 0.999 and figures["below"] == []
    assert figures["lowest"] == pytest.approx(float(cosines.min()), abs=1e-6)
    assert figures["median"] == pytest.approx(float(np.median(cosines)), abs=1e-6)
    assert figures["lowest"] >= 0.99999
    assert run(["check", str(index), "--model", "--sample", "5", "--device", "cpu"]) == 0
    line = next(li for li in capsys.readouterr().out.splitlines() if li.startswith("model"))
    assert (
        f"(fingerprint {model.fingerprint[:12]}): lowest cosine " in line
        and "on 5 files (bound 0.999)" in line
    )


def test_a_preprocessing_that_changed_is_an_error_naming_the_files(
    index: Path, model, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    original = OpenClipModel.preprocess
    monkeypatch.setattr(
        OpenClipModel, "preprocess", lambda self, image: original(self, ImageOps.mirror(image))
    )
    checked = check_model(index, model=model)
    assert not checked.agreement.holds and checked.agreement.lowest < 0.999
    assert checked.agreement.below and checked.agreement.below[0]["cosine"] == checked.agreement.lowest
    assert run(["check", str(index), "--model", "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert f"index {index} no longer reflects" in captured.err and "below      " in captured.out


def test_changed_files_are_left_out(index: Path, model, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(index.parent / "shapes", copy / "shapes")
    build_index(copy / "shapes", copy / "idx", model=model, progress=False)
    first = sorted((copy / "shapes").glob("*.png"))[0]
    ImageOps.flip(Image.open(first)).save(first)
    checked = check_model(copy / "idx", model=model)
    assert (checked.changed, checked.unreadable, checked.agreement.samples) == (1, 0, 11)
    assert checked.agreement.holds and "(1 changed left out)" in checked.in_words()
