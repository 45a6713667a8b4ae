"""The default decode gives the model the files' pixels; the fast decode (JPEG draft, box reduce) is opted
into, measured against the exact one at build (recorded, shown by ``info``), refused below its bound with
nothing written; an index that shrank before keeps decoding the way it was built."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from ibhelpers import noise_image

from counterclip.cli import run
from counterclip.engine import Engine
from counterclip.errors import InputError
from counterclip.index_builder import Index, build_index, update_index
from counterclip.index_builder import parity as parity_module
from counterclip.index_builder.decode import DecodeOptions, load_image
from counterclip.index_builder.manifest import Manifest, db_name


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Large JPEGs (the fast decode shrinks them 4x for the 32 px model) and one small PNG it leaves."""
    root = tmp_path_factory.mktemp("photos")
    for i in range(5):
        noise_image(10 + i, (256, 192)).resize((256, 192)).save(root / f"big{i}.jpg", quality=95)
    noise_image(20, (40, 40)).save(root / "small.png")
    return root


def test_the_default_is_the_exact_decode(photos: Path, model, tmp_path: Path) -> None:
    summary = build_index(photos, tmp_path / "idx", model=model, progress=False)
    assert summary.indexed == 6
    with Index.open(tmp_path / "idx") as idx:
        assert idx.decode_options == DecodeOptions(rgb="pillow")  # the files' pixels, open_clip's RGB rule
        assert idx.manifest.settings.decode_check is None
        stored = idx.images.vectors([idx.image_id_for_path("big0.jpg")])[0]
    full = load_image(photos / "big0.jpg").image
    assert full.size == (256, 192)
    assert float(stored @ model.encode_pil([full]).numpy()[0]) >= 0.99999


def test_the_fast_decode_is_measured_recorded_and_shown(photos: Path, model, tmp_path: Path, capsys) -> None:
    index = tmp_path / "idx"
    assert run(["build", str(photos), "--index", str(index), "--model", str(model.spec), "--fast-decode",
                "--device", "cpu", "--json"]) == 0  # fmt: skip
    capsys.readouterr()
    with Index.open(index) as idx:
        check = idx.manifest.settings.decode_check
        assert idx.decode_options.min_side == 32
        stored = idx.images.vectors([idx.image_id_for_path(f"big{i}.jpg") for i in range(5)])
    # the record holds the measured figures: recompute them from the two decodes
    exact = model.encode_pil([load_image(photos / f"big{i}.jpg").image for i in range(5)]).numpy()
    cosines = (stored * exact).sum(axis=1)
    assert check["samples"] == 6 and check["shrunk"] == 5 and check["min_side"] == 32
    assert check["bound"] == parity_module.FAST_DECODE_MIN_COSINE
    assert check["lowest"] == pytest.approx(float(cosines.min()), abs=1e-6)
    assert parity_module.FAST_DECODE_MIN_COSINE <= check["lowest"] <= check["median"] < 1.0  # measured
    assert run(["info", str(index)]) == 0
    line = next(li for li in capsys.readouterr().out.splitlines() if li.startswith("decode"))
    assert "fast (JPEG draft, box reduce to 32 px)" in line and f"{check['lowest']:.6f}" in line
    assert run(["info", str(index), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["settings"]["decode_check"] == check and payload["decode"].startswith("fast")


def test_a_fast_decode_below_the_bound_is_refused_with_nothing_written(
    photos: Path, model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(parity_module, "FAST_DECODE_MIN_COSINE", 0.9999999)
    with pytest.raises(InputError, match=r"--fast-decode refused .* reach only cosine 0\.99\d+ to the exact"):
        build_index(photos, tmp_path / "idx", model=model, progress=False, fast_decode=True)
    assert not (tmp_path / "idx").exists()
    argv = [
        "build",
        str(photos),
        "--index",
        str(tmp_path / "cli"),
        "--model",
        str(model.spec),
        "--fast-decode",
    ]
    assert run([*argv, "--device", "cpu"]) == 2
    assert "error: --fast-decode refused" in capsys.readouterr().err and not (tmp_path / "cli").exists()


def _as_built_before(index: Path) -> None:
    """Rewrite a generation as counterclip wrote it before the family RGB rules and the measure: its
    decode record without ``rgb`` (the robust rule, then the only one) and without a decode check."""
    manifest = Manifest.read(index)
    decode = {k: v for k, v in manifest.settings.decode.items() if k != "rgb"}
    settings = dataclasses.replace(manifest.settings, decode=decode, decode_check=None)
    with sqlite3.connect(index / db_name(manifest.generation)) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'decode'", (json.dumps(decode),))
        conn.execute("DELETE FROM meta WHERE key = 'decode_check'")
    conn.close()
    from counterclip.index_builder.checksums import checksum_file

    files = {**manifest.files, manifest.db_file: checksum_file(index / manifest.db_file).to_dict()}
    dataclasses.replace(manifest, settings=settings, files=files).write(index)


def test_an_index_that_shrank_before_keeps_decoding_as_built(
    photos: Path, model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("big0.jpg", "big1.jpg", "big2.jpg", "small.png"):
        (folder / name).write_bytes((photos / name).read_bytes())
    rgba = np.array(noise_image(7, (96, 96)).convert("RGBA"))
    rgba[:, :48, 3] = 0
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    monkeypatch.setattr(type(model), "rgb_conversion", property(lambda self: "robust"))  # the old rule
    build_index(folder, tmp_path / "idx", model=model, progress=False, fast_decode=True)
    monkeypatch.undo()
    _as_built_before(tmp_path / "idx")
    with Index.open(tmp_path / "idx") as idx:
        assert idx.decode_options == DecodeOptions(min_side=32, rgb="robust")
        for name in ("big0.jpg", "alpha.png"):
            stored = idx.images.vectors([idx.image_id_for_path(name)])[0]
            fresh = model.encode_pil([idx.load_image(name).model_input]).numpy()[0]
            assert float(stored @ fresh) >= 0.99999, name
    with Engine(Index.open(tmp_path / "idx"), model) as engine:  # answers verify: nothing reported changed
        result = engine.counterfactuals(image=1, text="a red circle", k=3, threshold=-1e9)
        assert result.stale == [] and result.items
    summary = update_index(tmp_path / "idx", model=model, progress=False)
    assert summary.unchanged == 5 and summary.embedded == 0
    with Index.open(tmp_path / "idx") as idx:
        assert idx.decode_options == DecodeOptions(min_side=32, rgb="robust")
    assert run(["info", str(tmp_path / "idx")]) == 0
    assert "shrinks large images to 32 px" in capsys.readouterr().out
