"""The counterfactual report's maps come from the explainers' own counterfactual maps, from plain inputs."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from counterclip.explainers import explain, image_counterfactual_maps, text_counterfactual_maps
from counterclip.models import load_model
from counterclip.report import overlay, token_strip
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


def _same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


def test_image_side_maps_are_the_explainers_counterfactual_maps(model, rgb_images, tmp_path) -> None:
    query, found = rgb_images[0], rgb_images[2]
    found.save(tmp_path / "found.png")
    result = _result("image", [_item(7, path="found.png"), _item(8, path="gone.png")])
    loaded: list = []

    def load(path):
        loaded.append(path.name)
        return open_image(path)

    maps = counterfactual_maps(model, result, tmp_path, query, load)
    assert loaded == ["found.png", "gone.png"] and set(maps.items) == {7}  # a missing file has no maps
    image = Image.open(tmp_path / "found.png").convert("RGB")
    pair, margin = image_counterfactual_maps(model, query, image, "a red circle")
    assert _same(maps.items[7][0], overlay(image, pair.pixel_map))
    assert _same(maps.items[7][1], overlay(image, margin.pixel_map))
    [query_map] = maps.query
    assert _same(query_map, overlay(query, explain(model, query, "a red circle").pixel_map))


def test_text_side_maps_and_flip_text(model, rgb_images, tmp_path) -> None:
    query = rgb_images[1]
    maps = counterfactual_maps(
        model, _result("text", [_item(3, kind="caption", text="a blue circle")]), tmp_path, query
    )
    pair, margin = text_counterfactual_maps(model, query, "a red circle", "a blue circle")
    strip, margin_map = maps.items[3]
    assert _same(strip, token_strip(pair.tokens, pair.token_map)) and pair.tokens == ["a", "blue", "circle"]
    assert _same(margin_map, overlay(query, margin.pixel_map))
    # flip mode has no text: the target label is explained; no query image, no item maps
    flip = counterfactual_maps(model, _result("image", [], text=None), tmp_path, query)
    assert _same(flip.query[0], overlay(query, explain(model, query, "a blue square").pixel_map))
    assert counterfactual_maps(model, _result("text", [_item(3, text="x")]), tmp_path).items == {}


def test_write_report_takes_a_result_object_or_its_dict(model, rgb_images, tmp_path) -> None:
    rgb_images[2].save(tmp_path / "found.png")
    result = _result("image", [_item(7, path="found.png")])

    @dataclass
    class Result:  # anything with to_dict() will do: the report never imports the engine
        payload: dict

        def to_dict(self) -> dict:
            return self.payload

    maps = counterfactual_maps(model, Result(result), tmp_path, rgb_images[0])
    page = write_counterfactual_report(tmp_path / "r.html", Result(result), tmp_path, rgb_images[0], maps)
    sources = re.findall(r'src="([^"]+)"', page.read_text())
    assert len(sources) == 1 + 1 + 1 + 2  # query, its map, the item's thumbnail and its two maps
    bare = write_counterfactual_report(tmp_path / "bare.html", result, tmp_path, None, CounterfactualMaps())
    assert len(re.findall(r'src="', bare.read_text())) == 1  # the thumbnail only
