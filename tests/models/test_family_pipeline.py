"""Each family through the whole pipeline on a few generated images: build -> search -> counterfactuals
(image and text side, increase and decrease, flip) -> explain (relevance, Grad-CAM, IG, LIME), through the
CLI and the Python API; and BLIP's matching head as the second verifier (``--verify-with itm``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from family_models import write_tiny_blip, write_tiny_openclip_siglip, write_tiny_siglip, write_tiny_slip
from PIL import Image

from counterclip.cli import run
from counterclip.engine import Engine
from counterclip.explainers import REGISTRY, PixelCodec, explain
from counterclip.models import load_model

FAMILY_SPECS = ("blip", "siglip", "open_clip_siglip", "slip")
TEXT = "a red circle"
LABELS = ["a red circle", "a blue square", "a green star"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    from counterclip.shapes import generate_folder

    root = tmp_path_factory.mktemp("family_pipeline")
    generate_folder(root / "shapes", n=16, seed=3, size=48)
    (root / "vocab.txt").write_text(
        "a red circle\na blue square\na green star on the left\na small purple cross\na red square\n"
        "a blue circle\na small red circle\n"
    )
    write_tiny_slip(root / "slip.pt")
    return {
        "root": root,
        "blip": f"hf:{write_tiny_blip(root / 'blip')}",
        "siglip": f"hf:{write_tiny_siglip(root / 'siglip')}",
        "open_clip_siglip": write_tiny_openclip_siglip(root / "oc_siglip"),
        "slip": f"slip:{root / 'slip.pt'}",
    }


@pytest.fixture(scope="module")
def built(world) -> dict[str, Path]:
    """One index per family, built through the CLI."""
    out = {}
    for name in FAMILY_SPECS:
        index = world["root"] / f"{name}.idx"
        argv = ["build", str(world["root"] / "shapes"), "--index", str(index), "--model", world[name]]
        assert run([*argv, "--vocab", str(world["root"] / "vocab.txt"), "--device", "cpu", "--json"]) == 0
        out[name] = index
    return out


def _fresh_image_vector(engine: Engine, path: str) -> np.ndarray:
    return engine.model.encode_pil([engine.indexed_image(path)]).numpy()[0]


@pytest.mark.parametrize("name", FAMILY_SPECS)
def test_build_search_counterfactuals(world, built, name, capsys) -> None:
    index = built[name]
    manifest = json.loads((index / "manifest.json").read_text())
    model = load_model(world[name], device="cpu")
    assert manifest["model"]["spec_string"] == world[name]
    assert manifest["model"]["fingerprint"] == model.fingerprint  # recorded, and the same on reload
    capsys.readouterr()
    assert run(["search", str(index), "--text", TEXT, "-k", "4", "--json", "--device", "cpu"]) == 0
    hits = json.loads(capsys.readouterr().out)["items"]
    with Engine.open(index, device="cpu") as engine:
        assert engine.model.family == model.family
        ids = np.asarray(engine.index.images.ids)
        scores = engine.pair_score.against(engine.index.images.vectors(ids), engine.encode_text(TEXT))
        expected = ids[np.argsort(-scores, kind="stable")][:4]
        assert [h["id"] for h in hits] == expected.tolist()  # brute force over the stored vectors
        np.testing.assert_allclose([h["score_after"] for h in hits], np.sort(scores)[::-1][:4], atol=1e-4)
        query = str(world["root"] / "shapes" / "000000.png")
        text_vec = engine.encode_text(TEXT)
        image_vec = engine.resolve_image(query).vector
        answered = 0
        for side in ("image", "text"):
            for mode in ("increase", "decrease"):
                result = engine.counterfactuals(image=query, text=TEXT, side=side, mode=mode, k=3)
                threshold = result.validity.threshold
                for item in result.items:
                    fresh = (
                        engine.pair_score.against(_fresh_image_vector(engine, item.path)[None], text_vec)[0]
                        if side == "image"
                        else engine.pair_score.against(
                            engine.model.encode_texts([item.text]).numpy(), image_vec
                        )[0]
                    )
                    assert item.score_after == pytest.approx(float(fresh), abs=1e-4)  # re-scored from source
                    assert (
                        item.score_after >= threshold if mode == "increase" else item.score_after <= threshold
                    )
                    assert item.verdict in ("verified", "weak")
                assert [i.rank for i in result.items] == list(range(1, len(result.items) + 1))
                answered += len(result.items)
                if engine.pair_score.absolute:
                    assert result.calibration.startswith("native")  # SigLIP: the model's own sigmoid
        assert answered > 0
        label_vecs = engine.model.encode_texts(LABELS).numpy()
        predicted = int(np.argmax(engine.pair_score.label_probabilities(image_vec[None], label_vecs)[0]))
        target = LABELS[(predicted + 1) % len(LABELS)]
        flipped = engine.counterfactuals(image=query, mode="flip", labels=LABELS, target=target, k=3)
        assert flipped.query["predicted"] == LABELS[predicted]
        for item in flipped.items:
            probabilities = engine.pair_score.label_probabilities(
                _fresh_image_vector(engine, item.path)[None], label_vecs
            )[0]
            assert LABELS[int(np.argmax(probabilities))] == target
    # the CLI's counterfactual command on the text side
    argv = [
        "counterfactual",
        str(index),
        "--image",
        query,
        "--text",
        TEXT,
        "--side",
        "text",
        "--mode",
        "decrease",
    ]
    assert run([*argv, "--json", "--device", "cpu"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["side"] == "text" and all(i["kind"] == "caption" for i in payload["items"])


def _hook_count(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


@pytest.mark.parametrize("name", FAMILY_SPECS)
def test_explain_every_method(world, built, name, tmp_path) -> None:
    image_path = world["root"] / "shapes" / "000001.png"
    model = load_model(world[name], device="cpu")
    image = Image.open(image_path).convert("RGB")
    hooks, fingerprint = _hook_count(model.module), model.fingerprint
    codec = PixelCodec.of(model)
    for method in ("relevance", "gradcam", "ig", "lime"):
        modality = "both" if "both" in REGISTRY.get(method).modalities else "image"
        exp = explain(
            model, image, TEXT, method=method, modality=modality, **REGISTRY.get(method).cheap_options
        )
        assert exp.pixel_map.shape == (image.height, image.width) and np.isfinite(exp.pixel_map).all()
        assert exp.patch_map.shape == model.vision_geometry.grid_size
        with torch.no_grad():  # the explainers see the image squashed to the model's size (PixelCodec)
            pixels = codec.to_model(codec.pil_to_pixels(image))
            score = model.score(model.image_features(pixels), model.encode_texts([TEXT]))[0, 0]
        assert exp.score == pytest.approx(float(score), abs=1e-4)  # it explains the pair score
        if modality == "both":
            assert exp.tokens is not None and np.isfinite(exp.token_map).all()
            assert len(exp.tokens) == len(exp.token_map) == len(TEXT.split())  # no padding, no specials
        assert _hook_count(model.module) == hooks
    model._fingerprint = None
    assert model.fingerprint == fingerprint  # weights untouched
    # and through the CLI, with the index's own model
    out = tmp_path / "map.png"
    argv = [
        "explain",
        "--index",
        str(built[name]),
        "--image",
        str(image_path),
        "--text",
        TEXT,
        "--out",
        str(out),
    ]
    assert run([*argv, "--method", "relevance", "--json"]) == 0
    assert out.is_file() or any(tmp_path.iterdir())


# --- BLIP's matching head as the second verifier -------------------------------------------------------
def test_verify_with_itm_rescores_every_answer_with_the_matching_head(world, built) -> None:
    query = str(world["root"] / "shapes" / "000000.png")
    with Engine.open(built["blip"], device="cpu") as engine:
        model = engine.model
        checked = {"image": 0, "text": 0}
        for side, mode in (
            ("image", "increase"),
            ("image", "decrease"),
            ("text", "increase"),
            ("text", "decrease"),
        ):
            result = engine.counterfactuals(
                image=query, text=TEXT, side=side, mode=mode, k=3, verify_with="itm"
            )
            answers = result.items + [i for group in result.baselines.values() for i in group]
            checked[side] += len(answers)
            for item in answers:
                if side == "image":
                    expected = model.match_head([engine.indexed_image(item.path)], [TEXT])[0]
                else:
                    expected = model.match_head([engine.indexed_image(query)], [item.text])[0]
                assert item.p_itm == pytest.approx(float(expected), abs=1e-6)
            disagree = [i for i in result.items if (i.p_itm < 0.5 if mode == "increase" else i.p_itm > 0.5)]
            assert not any(i.verdict == "verified" for i in disagree)
            warned = [w for w in result.warnings if "matching head" in w]
            if disagree:
                assert warned and f"{len(disagree)} of {len(result.items)} answers" in warned[0]
            else:
                assert not warned
        assert checked["image"] and checked["text"]  # answers of both sides were re-scored
        plain = engine.counterfactuals(image=query, text=TEXT, k=3)
        assert all(i.p_itm is None for i in plain.items)


def test_verify_with_itm_on_a_model_without_a_matching_head_is_an_error(world, built, capsys) -> None:
    query = str(world["root"] / "shapes" / "000000.png")
    argv = ["counterfactual", str(built["siglip"]), "--image", query, "--text", TEXT, "--verify-with", "itm"]
    assert run([*argv, "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    text = " ".join((captured.out + captured.err).split())
    assert "image-text matching head" in text and "siglip" in text
