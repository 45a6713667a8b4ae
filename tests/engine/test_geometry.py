"""Counterfactual geometry on hand-built colour vectors: the right answer is known by brute force."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from doubles import ColourModel, colour_vector, make_colour_index
from PIL import Image

from counterclip.engine import Engine, EngineOptions
from counterclip.errors import InputError

ORIGINAL = (90, 90, 200)


def _random_colours(n: int, seed: int = 0) -> dict[int, tuple[int, int, int]]:
    rng = np.random.default_rng(seed)
    colours = {}
    for i in range(1, n + 1):
        rgb = tuple(int(x) for x in rng.integers(0, 256, 3))
        if np.linalg.norm(np.asarray(rgb) / 255.0 - 0.5) > 0.1:  # avoid near-grey (ill-defined direction)
            colours[i] = rgb
    return colours


@pytest.fixture()
def setup(tmp_path, colour_texts):

    colours = _random_colours(80)
    colours[0] = ORIGINAL  # the query image is indexed as id 0
    index = make_colour_index(tmp_path, colours)
    model = ColourModel(colour_texts)
    engine = Engine(index, model, EngineOptions(k=4, diversity=0.0, baselines=True))
    return engine, index, model, colours


def _oracle(index, e0, scores, valid_mask, exclude=0) -> list[int]:
    ids = index.images.ids
    vecs = index.images.vectors(ids)
    order = [
        int(i) for i in ids[np.argsort(-(vecs @ e0), kind="stable")] if i != exclude and valid_mask[int(i)]
    ]
    return order


def test_increase_returns_closest_valid_first(setup) -> None:
    engine, index, model, colours = setup
    e0, t = colour_vector(ORIGINAL), model.texts["red"]
    threshold = 6.0
    result = engine.counterfactuals(image=0, text="red", mode="increase", threshold=threshold)
    scores = {i: float(colour_vector(c) @ t) * 10 for i, c in colours.items()}
    original = scores[0]
    valid = {i: s >= threshold and s > original for i, s in scores.items()}
    expected = _oracle(index, e0, scores, valid)[:4]
    assert [item.id for item in result.items] == expected
    assert result.validity.threshold == threshold and result.validity.original == pytest.approx(
        original, abs=1e-5
    )
    for item in result.items:
        assert item.verdict == "weak" and item.score_after >= threshold  # re-scored; no calibration holds
        assert item.score_after == pytest.approx(scores[item.id], abs=1e-4)
        assert item.delta == pytest.approx(item.score_after - original, abs=1e-5)
        assert item.distance == pytest.approx(1 - colour_vector(colours[item.id]) @ e0, abs=1e-5)
    assert [item.rank for item in result.items] == [1, 2, 3, 4]
    assert model.image_encodes >= 4  # returned items were re-encoded from their files


def test_decrease_returns_closest_valid_first(setup) -> None:
    engine, index, model, colours = setup
    e0, t = colour_vector(ORIGINAL), model.texts["blue"]
    threshold = 2.0
    result = engine.counterfactuals(image=0, text="blue", mode="decrease", threshold=threshold)
    scores = {i: float(colour_vector(c) @ t) * 10 for i, c in colours.items()}
    valid = {i: s <= threshold and s < scores[0] for i, s in scores.items()}
    assert [item.id for item in result.items] == _oracle(index, e0, scores, valid)[:4]
    assert all(item.score_after <= threshold for item in result.items)


def test_flip_returns_closest_flipped_first(setup) -> None:
    engine, index, model, colours = setup
    labels = ["red", "green", "blue"]
    result = engine.counterfactuals(image=0, mode="flip", labels=labels, target="red")
    label_vecs = np.stack([model.texts[label] for label in labels])
    predicted = {i: int(np.argmax(colour_vector(c) @ label_vecs.T)) for i, c in colours.items()}
    assert predicted[0] == 2  # the original is blue
    valid = {i: p == 0 for i, p in predicted.items()}
    e0 = colour_vector(ORIGINAL)
    assert [item.id for item in result.items] == _oracle(index, e0, {}, valid)[:4]
    assert result.query["predicted"] == "blue" and result.validity.target == "red"
    for item in result.items:
        assert item.score_after > result.validity.original  # target probability rose


def test_default_validity_rule_uses_index_distribution(setup) -> None:
    engine, index, model, colours = setup
    t = model.texts["red"]
    result = engine.counterfactuals(image=0, text="red", mode="increase", match_margin=0.25)
    scores = np.array([colour_vector(c) @ t * 10 for c in colours.values()])
    best, typical = scores.max(), np.median(scores)
    original = float(colour_vector(ORIGINAL) @ t * 10)
    assert original < typical  # a blue original is a poor red: the gap runs from the typical score
    assert result.validity.best == pytest.approx(best, abs=1e-4)
    assert result.validity.typical == pytest.approx(typical, abs=1e-4)
    assert result.validity.threshold == pytest.approx(best - 0.25 * (best - typical), abs=1e-4)
    assert all(item.score_after >= result.validity.threshold for item in result.items)
    assert "0.25" in result.validity.rule and "typical" in result.validity.rule


def test_increase_gap_runs_from_an_original_that_nearly_matches(setup) -> None:
    engine, index, model, colours = setup
    t = model.texts["blue"]  # the original (90, 90, 200) is already quite blue
    scores = np.array([colour_vector(c) @ t * 10 for c in colours.values()])
    best, typical = scores.max(), np.median(scores)
    original = float(colour_vector(ORIGINAL) @ t * 10)
    assert typical < original < best
    result = engine.counterfactuals(image=0, text="blue", mode="increase")  # default margin 0.2
    assert result.validity.threshold == pytest.approx(best - 0.2 * (best - original), abs=1e-4)
    assert "from the original" in result.validity.rule
    valid = {i: float(colour_vector(c) @ t * 10) >= result.validity.threshold for i, c in colours.items()}
    expected = _oracle(index, colour_vector(ORIGINAL), {}, valid)[:4]
    assert expected and [item.id for item in result.items] == expected


def test_default_decrease_rule_is_a_margin_below_the_best_match(setup) -> None:
    engine, index, model, colours = setup
    t = model.texts["blue"]
    scores = {i: float(colour_vector(c) @ t) * 10 for i, c in colours.items()}
    values = np.array(list(scores.values()))
    best, typical = values.max(), np.median(values)
    threshold = best - 0.25 * (best - typical)  # the documented default
    result = engine.counterfactuals(image=0, text="blue", mode="decrease")
    assert result.validity.threshold == pytest.approx(threshold, abs=1e-4)
    valid = {i: s <= threshold and s < scores[0] for i, s in scores.items()}
    assert len(result.items) == 4
    assert [item.id for item in result.items] == _oracle(index, colour_vector(ORIGINAL), scores, valid)[:4]
    looser = engine.counterfactuals(image=0, text="blue", mode="decrease", nomatch_margin=0.6)
    assert looser.validity.threshold == pytest.approx(best - 0.6 * (best - typical), abs=1e-4)
    assert all(item.score_after <= looser.validity.threshold for item in looser.items)


def test_stale_entry_is_reported_and_skipped(setup, tmp_path) -> None:
    engine, index, model, colours = setup
    first = engine.counterfactuals(image=0, text="red", mode="increase", threshold=6.0, baselines=False)
    stale_id = first.items[0].id
    Image.new("RGB", (8, 8), (0, 255, 0)).save(tmp_path / f"img{stale_id:03d}.png")  # the file changed
    second = engine.counterfactuals(image=0, text="red", mode="increase", threshold=6.0, baselines=False)
    assert stale_id not in [item.id for item in second.items]
    assert [s["id"] for s in second.stale] == [stale_id] and second.stale[0][
        "reason"
    ] == "changed since indexing"
    assert [item.id for item in second.items] == [item.id for item in first.items[1:]] + [second.items[-1].id]
    (tmp_path / f"img{first.items[1].id:03d}.png").unlink()  # a file deleted
    third = engine.counterfactuals(image=0, text="red", mode="increase", threshold=6.0, baselines=False)
    assert {s["reason"] for s in third.stale} == {"changed since indexing", "file missing or unreadable"}


def test_baselines(setup) -> None:
    engine, index, model, colours = setup
    result = engine.counterfactuals(image=0, text="red", mode="increase", threshold=6.0)
    t, e0 = model.texts["red"], colour_vector(ORIGINAL)
    scores = {i: float(colour_vector(c) @ t) * 10 for i, c in colours.items()}
    by_text = sorted((i for i in colours if i != 0), key=lambda i: -scores[i])
    valid = [i for i in by_text if scores[i] >= 6.0 and scores[i] > scores[0]]
    assert [x.id for x in result.baselines["first_valid_text_match"]] == valid[:1]
    # no calibration here: the rule's line stands in for the model's decision, so the nearest unlike
    # neighbour is the valid item nearest the original over the whole index
    nearest = max(valid, key=lambda i: colour_vector(colours[i]) @ e0)
    assert [x.id for x in result.baselines["nearest_unlike_neighbour"]] == [nearest]
    top50_valid = [i for i in by_text[:50] if i in valid]
    closest = max(top50_valid, key=lambda i: colour_vector(colours[i]) @ e0)
    assert [x.id for x in result.baselines["closest_valid_in_top50"]] == [closest]
    # the path's first answer is at least as close as either baseline's
    assert result.items[0].distance <= result.baselines["closest_valid_in_top50"][0].distance + 1e-6


def test_parallel_queries_equal_serial(setup) -> None:
    engine, *_ = setup
    queries = [
        dict(image=0, text=t, mode=m, threshold=th, baselines=False)
        for t, m, th in [("red", "increase", 6.0), ("green", "increase", 6.0), ("blue", "decrease", 2.0)] * 3
    ]
    serial = [[i.id for i in engine.counterfactuals(**q).items] for q in queries]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda q: [i.id for i in engine.counterfactuals(**q).items], queries))
    assert parallel == serial


def test_text_side(tmp_path, colour_texts) -> None:

    rng = np.random.default_rng(1)
    captions = {}
    for i in range(40):
        v = rng.normal(size=3).astype(np.float32)
        captions[i] = (f"caption {i}", v / np.linalg.norm(v))
    texts = dict(colour_texts)
    texts.update({text: vec for text, vec in captions.values()})
    index = make_colour_index(tmp_path, {0: ORIGINAL}, captions)
    engine = Engine(index, ColourModel(texts), EngineOptions(k=3, diversity=0.0))
    e_img, t0 = colour_vector(ORIGINAL), captions[5][1]
    original = float(e_img @ t0) * 10
    result = engine.counterfactuals(
        image=0, text="caption 5", side="text", mode="decrease", threshold=original - 3
    )
    valid = [i for i in captions if i != 5 and float(e_img @ captions[i][1]) * 10 <= original - 3]
    expected = sorted(valid, key=lambda i: -float(captions[i][1] @ t0))[:3]
    assert [item.text for item in result.items] == [captions[i][0] for i in expected]
    assert all(item.verdict == "weak" and item.kind == "caption" for item in result.items)


def test_bad_input(setup, tmp_path) -> None:
    engine, *_ = setup
    with pytest.raises(InputError, match="text is empty"):
        engine.counterfactuals(image=0, text="  ")
    with pytest.raises(InputError, match="query image not found"):
        engine.counterfactuals(image=tmp_path / "nope.png", text="red")
    with pytest.raises(InputError, match="is not one of the labels"):
        engine.counterfactuals(image=0, mode="flip", labels=["red", "green"], target="blue")
    with pytest.raises(InputError, match="already classified"):
        engine.counterfactuals(image=0, mode="flip", labels=["red", "blue"], target="blue")
    with pytest.raises(InputError, match="no captions"):
        engine.counterfactuals(image=0, text="red", side="text", mode="decrease")
    with pytest.raises(InputError, match="mode must be"):
        engine.counterfactuals(image=0, text="red", mode="sideways")


def test_search_by_image_id_excludes_itself(setup) -> None:
    engine, index, model, colours = setup
    result = engine.search(image=0, k=5)
    e0 = colour_vector(ORIGINAL)
    others = sorted((i for i in colours if i != 0), key=lambda i: -float(colour_vector(colours[i]) @ e0))
    assert [item.id for item in result.items] == others[:5]
    assert dataclasses.asdict(result.items[0])["kind"] == "image"


def test_text_side_prefers_fewest_word_edits(tmp_path, colour_texts) -> None:
    e_img = colour_vector(ORIGINAL)
    # both candidates stop matching the image; the one-word swap is further in embedding space
    near = colour_vector((200, 90, 60))
    far = colour_vector((210, 60, 40))
    captions = {
        1: ("a small blue circle on the left", e_img),
        2: ("a large small red circle on the left on a dark background", near),
        3: ("a small red circle on the left", far),
    }
    texts = dict(colour_texts)
    texts.update({text: vec for text, vec in captions.values()})
    index = make_colour_index(tmp_path, {0: ORIGINAL}, captions)
    engine = Engine(index, ColourModel(texts), EngineOptions(k=2, diversity=0.0))
    result = engine.counterfactuals(
        image=0, text="a small blue circle on the left", side="text", mode="decrease", threshold=5.0
    )
    assert [item.id for item in result.items] == [3, 2]
    assert [item.word_edits for item in result.items] == [1, 6]  # blue->red, +large, +on a dark background
