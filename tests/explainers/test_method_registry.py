"""The explainer registry: a method registered here runs through `explain` and the CLI's option parsing;
unknown options raise naming the method; the public views follow the registry."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from counterclip.cli import run
from counterclip.errors import InputError
from counterclip.explainers import (
    METHODS,
    MODALITIES,
    OPTIONS,
    REGISTRY,
    Explanation,
    Method,
    PairSimilarity,
    explain,
    register_method,
)
from counterclip.explainers._core.common import image_embedding, image_grid, text_embedding


@dataclass(frozen=True)
class FlatOptions:
    gain: float = 1.0  # value of every cell
    zero_rows: tuple[int, ...] = ()  # rows set to zero
    label: str | None = None  # echoed in the extras


def _flat(model, inputs, target, modality, options: FlatOptions) -> Explanation:
    """A map of ``gain`` everywhere but ``zero_rows``; the score is the target's, computed here."""
    with torch.no_grad():
        score = target(
            image_embedding(model, inputs.codec, inputs.pixels), text_embedding(model, inputs.tokens)
        )
    cells = np.full(image_grid(model), options.gain)
    cells[list(options.zero_rows)] = 0.0
    return Explanation("flat", modality, float(score[0]), patch_map=cells, extras={"label": options.label})


FLAT = Method("flat", "a constant map (test method)", ("image",), FlatOptions, _flat)


@pytest.fixture()
def flat_method():
    register_method(FLAT)
    try:
        yield FLAT
    finally:
        REGISTRY.remove("flat")


def test_a_registered_method_runs_through_explain(flat_method, tiny_vit, rgb_images) -> None:
    assert "flat" in METHODS and MODALITIES["flat"] == ("image",) and OPTIONS["flat"][0] == "gain"
    exp = explain(tiny_vit, rgb_images[0], "a red circle", method="flat", gain=2.5, zero_rows=(1,))
    expected = np.full((4, 4), 2.5)
    expected[1] = 0
    np.testing.assert_array_equal(exp.patch_map, expected)
    with torch.no_grad():
        image_emb = tiny_vit.encode_pil([rgb_images[0].resize((32, 32))])
        text_emb = tiny_vit.encode_texts(["a red circle"])
    assert exp.score == pytest.approx(
        float(PairSimilarity(tiny_vit.pair_score)(image_emb, text_emb)), abs=1e-4
    )
    with pytest.raises(InputError, match="method flat supports modality image, not 'text'"):
        explain(tiny_vit, rgb_images[0], "x", method="flat", modality="text")


def test_the_views_forget_a_removed_method(tiny_vit, rgb_images) -> None:
    register_method(FLAT)
    REGISTRY.remove("flat")
    assert "flat" not in METHODS and "flat" not in MODALITIES
    with pytest.raises(InputError, match="unknown method 'flat'; expected one of relevance, gradcam"):
        explain(tiny_vit, rgb_images[0], "x", method="flat")


def test_unknown_options_raise_naming_the_method_and_its_options(flat_method, tiny_vit, rgb_images) -> None:
    with pytest.raises(
        InputError,
        match=r"unknown option\(s\) for method flat: steps \(its options: gain, zero_rows, label\)",
    ):
        explain(tiny_vit, rgb_images[0], "x", method="flat", steps=3)
    with pytest.raises(InputError, match=r"for method relevance: layer \(its options: blocks\)"):
        explain(tiny_vit, rgb_images[0], "x", method="relevance", layer="transformer.resblocks.0")


def test_option_strings_are_typed_by_the_options_dataclass(flat_method) -> None:
    assert flat_method.parse_options({"gain": "0.5", "zero_rows": "0, 3", "label": "hi"}) == {
        "gain": 0.5,
        "zero_rows": (0, 3),
        "label": "hi",
    }
    assert flat_method.parse_options({"label": "none"}) == {"label": None}
    with pytest.raises(InputError, match="option gain of method flat must be float, got 'lots'"):
        flat_method.parse_options({"gain": "lots"})
    blocks = REGISTRY.get("relevance")
    assert blocks.parse_options({"blocks": "2"}) == {"blocks": 2}
    assert blocks.parse_options({"blocks": "0,1"}) == {"blocks": (0, 1)}
    assert REGISTRY.get("lime").parse_options({"batch_size": "8", "seed": "3"}) == {
        "batch_size": 8,
        "seed": 3,
    }


def test_a_registered_method_runs_through_the_cli(
    flat_method, tiny_openclip, rgb_images, tmp_path, capsys
) -> None:
    image = tmp_path / "x.png"
    rgb_images[1].save(image)
    args = [
        "explain",
        "--model",
        tiny_openclip,
        "--image",
        str(image),
        "--text",
        "a red circle",
        "--method",
        "flat",
    ]
    assert run([*args, "-o", "gain=3", "--option", "zero_rows=0,2", "-o", "label=cli", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["method"] == "flat" and payload["modality"] == "image"  # the method's only modality
    assert payload["patch_map"] == [[0.0] * 4, [3.0] * 4, [0.0] * 4, [3.0] * 4]
    assert payload["extras"] == {"label": "cli"}
    assert run([*args, "--steps", "4"]) == 2
    assert (
        "--steps does not apply to method flat (its options: gain, zero_rows, label)"
        in capsys.readouterr().err
    )
    assert run([*args, "-o", "colour=red"]) == 2
    assert "unknown option(s) for method flat: colour" in capsys.readouterr().err
    assert run([*args, "-o", "gain"]) == 2
    assert "--option takes KEY=VALUE" in capsys.readouterr().err


def test_list_methods_reads_the_registry(flat_method, capsys) -> None:
    assert run(["explain", "--list-methods", "--json"]) == 0
    rows = {row["method"]: row for row in json.loads(capsys.readouterr().out)}
    assert list(rows) == [*REGISTRY.names()]
    assert rows["flat"]["options"] == {"gain": 1.0, "zero_rows": [], "label": None}
    assert rows["lime"]["modalities"] == ["image", "text", "both"]


def test_every_builtin_method_declares_consistent_options() -> None:
    for method in REGISTRY:
        assert method.option_names() == tuple(method.defaults())
        method.make_options(method.evaluation_options)
        method.make_options(method.cheap_options)
    with pytest.raises(InputError, match="unknown option"):
        Method("bad", "bad presets", ("image",), FlatOptions, _flat, cheap_options={"steps": 1})
