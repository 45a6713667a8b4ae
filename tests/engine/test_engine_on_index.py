"""The engine over a real index (tiny random open_clip model): verification from files, stale entries,
the CLI's JSON schema, and the HTML report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from counterclip.cli import run
from counterclip.engine import Engine
from counterclip.index_builder import build_index


@pytest.fixture(scope="module")
def shapes_index(tmp_path_factory, tiny_openclip):
    from counterclip.shapes import generate_folder

    root = tmp_path_factory.mktemp("engine_index")
    folder, index_dir = root / "shapes", root / "idx"
    generate_folder(folder, n=40, seed=3, size=48)
    (root / "vocab.txt").write_text(
        "a red circle\na blue square\na green star on the left\na small purple cross\n"
    )
    build_index(
        folder, index_dir, model=tiny_openclip, vocab=root / "vocab.txt", device="cpu", progress=False
    )
    return folder, index_dir


def test_engine_opens_with_its_model_and_verifies(shapes_index) -> None:
    folder, index_dir = shapes_index
    with Engine.open(index_dir, device="cpu") as engine:
        query = folder / "000000.png"
        result = engine.counterfactuals(image=str(query), text="a red circle", k=3)
        own_id = engine.index.image_id_for_path(query)
        assert own_id is not None and own_id not in [i.id for i in result.items]
        text_vec = engine.model.encode_texts(["a red circle"]).numpy()[0]
        for item in result.items:
            # the score was recomputed from the file, and equals the stored vector's score
            fresh = engine.model.encode_pil([Image.open(folder / item.path).convert("RGB")]).numpy()[0]
            assert item.verdict in ("verified", "weak")  # re-scored from its file
            assert item.score_after == pytest.approx(
                float(fresh @ text_vec) * engine.pair_score.scale, abs=1e-3
            )
            assert item.score_after >= result.validity.threshold
        assert [i.rank for i in result.items] == list(range(1, len(result.items) + 1))
        distances = [i.distance for i in result.items]
        assert distances == sorted(distances)  # diversity=0.2 keeps near-sorted; first is the closest
        assert distances[0] == pytest.approx(min(distances))


def test_a_query_path_relative_to_the_cwd_is_the_users_file(shapes_index, monkeypatch) -> None:
    # The index resolves relative paths against its own root; a query path means the working directory.
    folder, index_dir = shapes_index
    monkeypatch.chdir(folder.parent)
    with Engine.open(index_dir, device="cpu") as engine:
        relative = Path(folder.name) / "000003.png"
        query = engine.resolve_image(str(relative))
        stored = engine.index.images.vectors([engine.index.image_id_for_path(folder / "000003.png")])[0]
        assert query.id is not None
        assert float(query.vector @ stored) == pytest.approx(1.0, abs=1e-5)


def test_exact_search_equals_brute_force(shapes_index) -> None:
    _, index_dir = shapes_index
    with Engine.open(index_dir, device="cpu") as engine:
        result = engine.search(text="a blue square", k=5)
        ids = engine.index.images.ids
        text_vec = engine.model.encode_texts(["a blue square"]).numpy()[0]
        scores = engine.index.images.vectors(ids) @ text_vec
        expected = ids[np.argsort(-scores, kind="stable")][:5]
        assert [i.id for i in result.items] == expected.tolist()


def test_stale_file_is_caught(tmp_path, tiny_openclip) -> None:
    from counterclip.shapes import generate_folder

    folder, index_dir = tmp_path / "f", tmp_path / "idx"
    generate_folder(folder, n=12, seed=5, size=48)
    build_index(folder, index_dir, model=tiny_openclip, device="cpu", progress=False)
    with Engine.open(index_dir, device="cpu") as engine:
        query_id = int(engine.index.images.ids[0])
        first = engine.counterfactuals(image=query_id, text="a red circle", k=3, baselines=False)
        assert first.items
        changed = first.items[0]
        Image.new("RGB", (48, 48), (0, 0, 0)).save(folder / changed.path)  # edited after indexing
        second = engine.counterfactuals(image=query_id, text="a red circle", k=3, baselines=False)
        assert changed.id not in [i.id for i in second.items]
        assert [s["id"] for s in second.stale] == [changed.id]


def test_cli_json_schema_and_report(shapes_index, tmp_path, capsys) -> None:
    folder, index_dir = shapes_index
    report = tmp_path / "cf.html"
    code = run(
        [
            "counterfactual",
            str(index_dir),
            "--image",
            str(folder / "000001.png"),
            "--text",
            "a blue square",
            "-k",
            "2",
            "--device",
            "cpu",
            "--json",
            "--report",
            str(report),
        ]
    )
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert set(payload) >= {
        "side",
        "mode",
        "text",
        "query",
        "validity",
        "items",
        "baselines",
        "stale",
        "timings",
        "report",
    }
    assert set(payload["validity"]) >= {"rule", "threshold", "best", "typical", "original"}
    for item in payload["items"]:
        assert set(item) >= {
            "id",
            "path",
            "score_before",
            "score_after",
            "delta",
            "distance",
            "rank",
            "verified",
            "verdict",
            "p_match",
            "step",
        }
        assert item["verdict"] in ("verified", "weak")  # re-scored from its file
        assert item["verified"] == (item["verdict"] == "verified")
    assert set(payload["baselines"]) == {
        "nearest_unlike_neighbour",
        "first_valid_text_match",
        "closest_valid_in_top50",
    }
    html = report.read_text()
    assert html.startswith("<!doctype html>") and 'src="http' not in html
    assert "An answer counts when it scores at least" in html  # the rule in plain words

    code = run(["search", str(index_dir), "--text", "a red circle", "-k", "3", "--device", "cpu", "--json"])
    assert code == 0
    items = json.loads(capsys.readouterr().out)["items"]
    assert len(items) == 3 and all(set(i) >= {"id", "path", "score_after", "rank"} for i in items)


def test_cli_text_side_and_errors(shapes_index, tmp_path, capsys) -> None:
    folder, index_dir = shapes_index
    code = run(
        [
            "counterfactual",
            str(index_dir),
            "--image",
            str(folder / "000002.png"),
            "--text",
            "a red circle",
            "--side",
            "text",
            "--mode",
            "decrease",
            "--device",
            "cpu",
            "--json",
        ]
    )
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert all(
        i["text"] and i["verdict"] != "unverifiable" and i["score_after"] <= payload["validity"]["threshold"]
        for i in payload["items"]
    )
    # --margin applies to the mode in use: decrease takes it as the share of the spread below the best match
    base = ["counterfactual", str(index_dir), "--image", str(folder / "000002.png"), "--text", "a red circle"]
    assert (
        run([*base, "--side", "text", "--mode", "decrease", "--margin", "0.6", "--device", "cpu", "--json"])
        == 0
    )
    validity = json.loads(capsys.readouterr().out)["validity"]
    spread = validity["best"] - validity["typical"]
    assert validity["threshold"] == pytest.approx(validity["best"] - 0.6 * spread, abs=1e-3)
    assert (
        run(
            [
                "counterfactual",
                str(index_dir),
                "--image",
                str(tmp_path / "none.png"),
                "--text",
                "x",
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert "query image not found" in capsys.readouterr().err
    assert (
        run(
            [
                "counterfactual",
                str(index_dir),
                "--image",
                str(folder / "000002.png"),
                "--text",
                " ",
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert "text is empty" in capsys.readouterr().err
    assert (
        run(
            [
                "counterfactual",
                str(index_dir),
                "--image",
                str(folder / "000002.png"),
                "--mode",
                "flip",
                "--labels",
                "a red circle,a blue square",
                "--target",
                "a star",
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert "is not one of the labels" in capsys.readouterr().err
    assert run(["search", str(tmp_path / "missing.idx"), "--text", "x"]) == 2
    assert "index not found" in capsys.readouterr().err


def test_large_jpegs_verify_without_false_stale(tmp_path, tiny_openclip) -> None:
    """The index may decode big JPEGs at a reduced DCT scale; verification decodes them the same way, so a
    re-encoded file reproduces its stored vector."""
    from counterclip.engine.request import decode_as_indexed
    from counterclip.index_builder.decode import load_image as full_decode

    rng = np.random.default_rng(0)
    folder, index_dir = tmp_path / "jpegs", tmp_path / "idx"
    folder.mkdir()
    for i in range(12):
        small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((640, 480), Image.BICUBIC).save(folder / f"p{i:02d}.jpg", quality=90)
    build_index(folder, index_dir, model=tiny_openclip, device="cpu", progress=False, fast_decode=True)
    with Engine.open(index_dir, device="cpu") as engine:
        query = int(engine.index.images.ids[0])
        meta = engine.index.images.meta([query])[0]
        decoded = decode_as_indexed(engine.index, meta["abs_path"]).image
        assert decoded.size == engine.index.load_image(meta["abs_path"]).image.size
        assert decoded.size != full_decode(meta["abs_path"]).image.size  # the index really scaled it
        fresh = engine.model.encode_pil([decoded]).numpy()[0]
        np.testing.assert_allclose(fresh, engine.index.images.vectors([query])[0], atol=1e-5)
        result = engine.counterfactuals(
            image=query, text="a red circle", k=3, threshold=-100.0, baselines=False
        )
        assert result.stale == []
        assert len(result.items) == 3 and all(item.verdict != "unverifiable" for item in result.items)


def test_onnx_runtime_gives_the_torch_answers(shapes_index, tmp_path, monkeypatch) -> None:
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("COUNTERCLIP_ONNX_CACHE", str(tmp_path / "onnx-cache"))
    folder, index_dir = shapes_index
    query = dict(image=str(folder / "000001.png"), text="a red circle", k=3, threshold=-100.0)
    with Engine.open(index_dir, device="cpu") as torch_engine:
        expected = torch_engine.counterfactuals(**query)
        hits = torch_engine.search(text="a blue square", k=4)
    with Engine.open(index_dir, device="cpu", runtime="onnx") as onnx_engine:
        assert type(onnx_engine.encoder).__name__ == "OnnxEncoder" and onnx_engine.model is not None
        got = onnx_engine.counterfactuals(**query)
        onnx_hits = onnx_engine.search(text="a blue square", k=4)
    assert [i.id for i in got.items] == [i.id for i in expected.items]
    for a, b in zip(got.items, expected.items, strict=True):
        assert a.score_after == pytest.approx(b.score_after, abs=1e-3) and a.verdict == b.verdict
    assert [i.id for i in onnx_hits.items] == [i.id for i in hits.items]


def test_readings_that_do_not_hold_order_nothing(shapes_index) -> None:
    """A random-weight model reads no image by its captions (best captions do not beat shuffled ones), so
    its image-side answers keep the distance order, and the card measures the picture, not readings."""
    _, index_dir = shapes_index
    with Engine.open(index_dir, device="cpu") as engine:
        assert engine.resources().substitutes is not None  # the captions do name substitutes
        assert engine.resources().readings_hold is False
        result = engine.counterfactuals(
            image=1, text="a red circle", k=3, threshold=-1e9, quality=True, image_proximity="readings"
        )
        assert result.order.startswith("by distance to the original")
        assert result.quality.answers[0].understandability.definition.startswith("share of the picture")
