"""The counterfactual report's maps come from the explainers' own counterfactual maps, from plain inputs."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from counterclip.explainers import explain, image_counterfactual_maps, text_counterfactual_maps
from counterclip.explainers.figure import MapScale
from counterclip.explainers.metrics import map_faithfulness
from counterclip.models import load_model
from counterclip.report import overlay
from counterclip.report.counterfactual import (
    CounterfactualMaps,
    counterfactual_maps,
    open_image,
    write_counterfactual_report,
)


@pytest.fixture(scope="module")
def model(tiny_openclip: str):
    return load_model(tiny_openclip, device="cpu")


def _item(id_: int, **fields) -> dict:
    base = {"id": id_, "kind": "image", "path": None, "text": None, "score_before": 1.0, "score_after": 2.0}
    base.update({"delta": 1.0, "distance": 0.1, "rank": id_, "verified": True, "step": 0, **fields})
    return base


def _result(side: str, items: list[dict], text: str | None = "a red circle") -> dict:
    return {
        "side": side,
        "mode": "increase",
        "text": text,
        "query": {"target": "a blue square"} if text is None else {},
        "validity": {"rule": "score >= 1"},
        "items": items,
        "baselines": {},
        "stale": [],
        "timings": {"total": 0.01},
    }


def _same(a, b: Image.Image) -> bool:
    """A tile's picture (or a picture) equals ``b`` pixel for pixel."""
    a = a.image if hasattr(a, "image") else a
    return a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


def test_image_side_maps_are_the_explainers_counterfactual_maps(model, rgb_images, tmp_path) -> None:
    query, found = rgb_images[0], rgb_images[2]
    found.save(tmp_path / "found.png")
    result = _result("image", [_item(7, path="found.png", p_match=0.97), _item(8, path="gone.png")])
    result["original"] = {"p_match": 0.93}  # both pairs match: their maps say why
    loaded: list = []

    def load(path):
        loaded.append(path.name)
        return open_image(path)

    steps: list = []
    maps = counterfactual_maps(
        model, result, tmp_path, query, load, progress=lambda d, t: steps.append((d, t))
    )
    assert loaded == ["found.png", "gone.png"] and set(maps.items) == {7}  # a missing file has no maps
    assert steps == [(1, 2), (2, 2)]
    image = Image.open(tmp_path / "found.png").convert("RGB")
    pair, margin = image_counterfactual_maps(model, query, image, "a red circle")
    matches, rather = maps.items[7]
    assert _same(matches, overlay(image, pair.pixel_map)) and _same(rather, overlay(image, margin.pixel_map))
    assert matches.title == "why it matches \u201ca red circle\u201d"
    assert rather.title == "why this image rather than the original"
    # each map carries its colour scale and its faithfulness for that image
    assert matches.scale == MapScale.of(pair.pixel_map) and rather.scale == MapScale.of(margin.pixel_map)
    expected = map_faithfulness(model, image, "a red circle", pair.pixel_map)
    assert matches.notes == [expected.describe()]
    [query_map] = maps.query
    assert _same(query_map, overlay(query, explain(model, query, "a red circle").pixel_map))
    assert query_map.title == "why the original matches \u201ca red circle\u201d"


def test_text_side_maps_mark_the_changed_word_and_flip_text(model, rgb_images, tmp_path) -> None:
    query = rgb_images[1]
    result = _result("text", [_item(3, kind="caption", text="a blue circle")])
    maps = counterfactual_maps(model, result, tmp_path, query, faithfulness=False)
    pair, margin = text_counterfactual_maps(model, query, "a red circle", "a blue circle")
    words, margin_tile = maps.items[3]
    assert words.tokens == ["a", "blue", "circle"] == pair.tokens
    np.testing.assert_array_equal(words.values, pair.token_map)
    assert words.marked == (1,)  # "blue" replaced "red"
    assert _same(margin_tile, overlay(query, margin.pixel_map)) and margin_tile.notes == []
    # flip mode has no text: the target label is explained; no query image, no item maps
    flip = counterfactual_maps(model, _result("image", [], text=None), tmp_path, query, faithfulness=False)
    assert _same(flip.query[0], overlay(query, explain(model, query, "a blue square").pixel_map))
    assert counterfactual_maps(model, _result("text", [_item(3, text="x")]), tmp_path).items == {}


def test_flip_mode_gives_the_originals_label_probabilities(model, rgb_images, tmp_path) -> None:
    query = rgb_images[0]
    result = _result("image", [], text=None)
    result.update(mode="flip", query={"labels": ["a red circle", "a blue square"], "target": "a blue square"})
    maps = counterfactual_maps(model, result, tmp_path, query, faithfulness=False)
    with torch.no_grad():
        expected = model.pair_score.label_probabilities(
            model.encode_pil([query]), model.encode_texts(["a red circle", "a blue square"])
        )[0]
    assert list(maps.query_probabilities) == ["a red circle", "a blue square"]
    np.testing.assert_allclose(list(maps.query_probabilities.values()), expected.numpy(), rtol=1e-5)
    assert sum(maps.query_probabilities.values()) == pytest.approx(1.0)


def test_write_report_takes_a_result_object_or_its_dict(model, rgb_images, tmp_path) -> None:
    rgb_images[2].save(tmp_path / "found.png")
    result = _result("image", [_item(7, path="found.png")])

    @dataclass
    class Result:  # anything with to_dict() will do: the report never imports the engine
        payload: dict

        def to_dict(self) -> dict:
            return self.payload

    maps = counterfactual_maps(model, Result(result), tmp_path, rgb_images[0], faithfulness=False)
    page = write_counterfactual_report(
        tmp_path / "r.html", Result(result), tmp_path, rgb_images[0], maps, captions={7: ["a red thing"]}
    )
    text = page.read_text()
    pictures = re.findall(r'<img[^>]*class="cc-shown"', text)
    assert len(pictures) == 1 + 2  # the query's map and the item's two maps
    assert len(re.findall(r'class="cc-legend"', text)) == 3  # a legend per map
    assert "\u201ca red thing\u201d" in text  # the answer's caption from the index
    bare = write_counterfactual_report(tmp_path / "bare.html", result, tmp_path, None, CounterfactualMaps())
    assert len(re.findall(r'src="', bare.read_text())) == 1  # the thumbnail only


def test_a_pair_that_does_not_match_is_not_titled_why_it_matches(model, rgb_images, tmp_path) -> None:
    rgb_images[2].save(tmp_path / "found.png")
    result = _result("image", [_item(7, path="found.png", p_match=0.02)])
    result["original"] = {"p_match": 0.01}
    maps = counterfactual_maps(model, result, tmp_path, rgb_images[0], faithfulness=False)
    assert maps.items[7][0].title == "what in it counts toward \u201ca red circle\u201d (not a match)"
    assert maps.query[0].title == "what in the original counts toward \u201ca red circle\u201d (not a match)"
    unknown = counterfactual_maps(
        model, _result("image", [_item(7, path="found.png")]), tmp_path, rgb_images[0]
    )
    assert unknown.items[7][0].title == "what in it counts toward \u201ca red circle\u201d"  # no calibration
