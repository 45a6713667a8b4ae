"""`counterclip explain` and `counterclip eval explainers` through the real CLI entry point."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from counterclip.cli import run


@pytest.fixture()
def image_file(tmp_path, rgb_images):
    path = tmp_path / "x.png"
    rgb_images[2].save(path)
    return path


def test_explain_json_and_panel(tiny_openclip, image_file, tmp_path, capsys) -> None:
    panel_path = tmp_path / "out" / "panel.png"
    code = run(
        [
            "explain",
            "--model",
            tiny_openclip,
            "--image",
            str(image_file),
            "--text",
            "a red circle",
            "--out",
            str(panel_path),
            "--json",
        ]
    )
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["method"] == "relevance" and payload["modality"] == "both"
    assert len(payload["patch_map"]) == 4 and payload["tokens"] == ["a", "red", "circle"]
    with Image.open(panel_path) as im:
        assert im.format == "PNG" and im.width >= 3 * 50


def test_explain_labels_margin_and_index(tiny_openclip, image_file, tmp_path, capsys) -> None:
    # an index `build` really wrote: explain --index loads the model its manifest records
    from counterclip.index_builder import build_index

    folder, index = tmp_path / "photos", tmp_path / "idx"
    folder.mkdir()
    for n, colour in enumerate(("red", "blue", "green")):
        Image.new("RGB", (40, 40), colour).save(folder / f"{n}.png")
    build_index(folder, index, model=tiny_openclip, progress=False, device="cpu")
    args = [
        "explain",
        "--index",
        str(index),
        "--image",
        str(image_file),
        "--labels",
        "a red circle,a blue square",
    ]
    assert (
        run([*args, "--target", "a blue square", "--versus", "a red circle", "--method", "gradcam", "--json"])
        == 0
    )
    payload = json.loads(capsys.readouterr().out)
    assert payload["explains"] == "margin 'a blue square' over 'a red circle'"
    assert run([*args, "--target", "a green star"]) == 2
    assert "--target" in capsys.readouterr().err


def test_explain_titles_the_map_by_p_match(tmp_path, capsys) -> None:
    """The pair map says "why it matches" only when the calibration calls the pair a match: the model's
    shipped calibration with --model, the one the index's queries use with --index."""
    from counterclip.calibration import Calibration
    from counterclip.index_builder import build_index
    from counterclip.models.factory import BUNDLED_CALIBRATION, bundled_dir
    from counterclip.shapes import generate_folder, read_labels

    generate_folder(tmp_path / "shapes", n=24, seed=3, size=64)
    build_index(tmp_path / "shapes", tmp_path / "idx", model="bundled:shapes", progress=False, device="cpu")
    first = read_labels(tmp_path / "shapes")[0]
    shipped = Calibration.read(bundled_dir("shapes") / BUNDLED_CALIBRATION)
    other = "a red star" if first["colour"] != "red" else "a blue star"
    for source in (["--model", "bundled:shapes"], ["--index", str(tmp_path / "idx")]):
        for text, matches in ((first["caption"], True), (other, False)):
            panel = tmp_path / "panel.png"
            args = ["explain", *source, "--image", str(tmp_path / "shapes" / first["file"]), "--text", text]
            assert run([*args, "--out", str(panel), "--json"]) == 0
            payload = json.loads(capsys.readouterr().out)
            p_match = payload["extras"]["p_match"]
            assert p_match == pytest.approx(float(shipped.probability(payload["score"])), abs=1e-9)
            assert (p_match >= 0.5) is matches
            with Image.open(panel) as im:
                description = im.text["Description"]
            title = (
                f"why it matches {text!r}" if matches else f"what in it counts toward {text!r} (not a match)"
            )
            assert f"tile: {title}" in description


def test_explain_errors_are_one_line(tiny_openclip, image_file, tmp_path, capsys) -> None:
    assert run(["explain", "--index", str(tmp_path), "--image", str(image_file), "--text", "x"]) == 2
    assert "manifest.json" in capsys.readouterr().err
    assert (
        run(["explain", "--model", tiny_openclip, "--image", str(tmp_path / "missing.png"), "--text", "x"])
        == 2
    )
    assert "image not found" in capsys.readouterr().err
    assert (
        run(
            [
                "explain",
                "--model",
                tiny_openclip,
                "--image",
                str(image_file),
                "--text",
                "x",
                "--method",
                "nope",
            ]
        )
        == 2
    )


def test_list_layers(tiny_openclip, capsys) -> None:
    assert run(["explain", "--model", tiny_openclip, "--list-layers", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload == {
        "layers": ["transformer.resblocks.0", "transformer.resblocks.1"],
        "default": "transformer.resblocks.1",
    }


def test_pixel_cf_writes_the_edited_image(tiny_openclip, image_file, tmp_path, capsys) -> None:
    panel_path = tmp_path / "cf.png"
    args = ["explain", "--model", tiny_openclip, "--image", str(image_file), "--text", "a red circle"]
    assert run([*args, "--method", "pixel-cf", "--steps", "3", "--out", str(panel_path)]) == 0
    assert "score" in capsys.readouterr().out
    with Image.open(tmp_path / "cf.edited.png") as im:
        assert im.size == (50, 64)


def test_eval_explainers_json(tiny_openclip, capsys) -> None:
    args = ["eval", "explainers", "--model", tiny_openclip, "--n", "1", "--methods", "relevance"]
    assert run([*args, "--sensitivity-images", "0", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert set(payload["methods"]) == {"relevance"} and payload["n"] == 1
