"""Verdicts: "verified" only where a calibration says the answer really is what was asked.

The colour world makes every score known: score = 10 * cos(image colour, text colour). A calibration
whose match line is at score 8 (cos 0.8) is set on the index, so which answers are matches is known too.
"""

from __future__ import annotations

import numpy as np
import pytest
from doubles import ColourModel, colour_vector, make_colour_index

from counterclip.calibration import Calibration, ScoreSummary
from counterclip.engine import Engine, EngineOptions
from counterclip.errors import InputError

LINE = 8.0  # p(match) = 0.5 at score 8
CALIBRATION = Calibration(
    "captions", "colour-model", 2.0, -2.0 * LINE, ScoreSummary(50, 9.0, 9.6, 10.0), None, 0.99, "test"
)
ORIGINAL = (90, 90, 200)  # blue-ish
REDS = {1: (250, 20, 20), 2: (240, 40, 30), 3: (200, 30, 60), 4: (230, 60, 20)}
BLUES = {5: (40, 40, 250), 6: (60, 50, 240)}


def _engine(tmp_path, colours, texts, captions=None, calibration=CALIBRATION, **options):
    index = make_colour_index(tmp_path, {0: ORIGINAL, **colours}, captions)
    index.calibration = calibration
    return Engine(index, ColourModel(texts), EngineOptions(k=3, diversity=0.0, baselines=False, **options))


def test_a_present_match_is_verified_and_an_absent_one_is_weak(tmp_path, colour_texts) -> None:
    engine = _engine(tmp_path, {**REDS, **BLUES}, colour_texts)
    present = engine.counterfactuals(image=0, text="red", threshold=5.0)
    assert present.items and all(item.verdict == "verified" for item in present.items)
    for item in present.items:
        score = 10 * float(colour_vector(REDS[item.id]) @ colour_texts["red"])
        assert item.p_match == pytest.approx(float(CALIBRATION.probability(score)), abs=1e-4)
        assert item.p_match >= 0.9 and item.verified
    assert not any("nothing that matches" in w for w in present.warnings)
    assert present.calibration == CALIBRATION.name()

    # no green in the index: the best it holds passes the relative rule but is no match
    absent = engine.counterfactuals(image=0, text="green")
    assert absent.items and all(item.verdict == "weak" and not item.verified for item in absent.items)
    assert all(item.p_match < 0.5 for item in absent.items)
    warning = next(w for w in absent.warnings if "nothing that matches 'green'" in w)
    assert "true pairs score 9.0-10.0" in warning


def test_decrease_is_verified_only_when_the_answer_really_stops_matching(tmp_path, colour_texts) -> None:
    engine = _engine(tmp_path, {**REDS, **BLUES}, colour_texts)
    result = engine.counterfactuals(image=5, text="blue", mode="decrease", threshold=5.0)
    assert result.items
    for item in result.items:
        assert item.verdict == ("verified" if item.p_match <= 0.1 else "weak")
    # the original (purple-blue) matches "red" by no measure: there is nothing to take away, said first,
    # and no answer gets the green badge (each says why)
    result = engine.counterfactuals(image=0, text="red", mode="decrease", threshold=-20.0)
    assert result.warnings[0].startswith("the original already does not match 'red'")
    assert "nothing to take away" in result.warnings[0]
    assert result.original["settled"] == result.warnings[0] and result.original["p_match"] <= 0.1
    assert all(item.verdict == "weak" and "already does not match" in item.reason for item in result.items)


def test_without_calibration_nothing_is_verified(tmp_path, colour_texts) -> None:
    engine = _engine(tmp_path, {**REDS, **BLUES}, colour_texts, calibration=None)
    result = engine.counterfactuals(image=0, text="red", threshold=5.0)
    assert result.items and all(item.verdict == "weak" for item in result.items)
    assert result.calibration is None and "no calibration holds" in result.warnings[0]
    # a calibration fitted for another model is never applied
    other = Calibration("captions", "another-model", 2.0, -16.0)
    (tmp_path / "b").mkdir()
    engine = _engine(tmp_path / "b", {**REDS}, colour_texts, calibration=other)
    assert engine.evidence.calibration is None


def test_no_file_to_rescore_is_unverifiable(tmp_path, colour_texts) -> None:
    engine = _engine(tmp_path, {**REDS}, colour_texts, verify=False)
    result = engine.counterfactuals(image=0, text="red", threshold=5.0)
    assert result.items and all(item.verdict == "unverifiable" for item in result.items)


def test_misspelt_words_are_named_and_keep_verdicts_weak(tmp_path, colour_texts) -> None:
    texts = {**colour_texts, "a red car": colour_texts["red"], "a blue sky": colour_texts["blue"]}
    texts["a rde car"] = colour_texts["red"]  # the colour model reads the slip as red
    captions = {10: ("a red car", colour_texts["red"]), 11: ("a blue sky", colour_texts["blue"])}
    engine = _engine(tmp_path, {**REDS}, texts, captions=captions)
    result = engine.counterfactuals(image=0, text="a rde car", threshold=5.0)
    assert result.items and all(item.verdict == "weak" for item in result.items)
    assert any("(rde -> red)" in w for w in result.warnings)
    assert any("no answer is 'verified'" in w for w in result.warnings)
    plain = engine.counterfactuals(image=0, text="a red car", threshold=5.0)
    assert all(item.verdict == "verified" for item in plain.items)
    search = engine.search(text="a rde car", k=2)
    assert any("(rde -> red)" in w for w in search.warnings)


def test_an_engine_refuses_a_model_the_index_was_not_built_with(tmp_path, colour_texts) -> None:
    index = make_colour_index(tmp_path, {0: ORIGINAL, **REDS})
    index.fingerprint = "built-with-something-else"
    with pytest.raises(InputError, match="another model"):
        Engine(index, ColourModel(colour_texts))


def test_distinct_changes_come_first(tmp_path, colour_texts) -> None:
    # two ways to stop being blue-ish: towards red (three near copies) and towards green (one, a bit further)
    colours = {1: (200, 60, 120), 2: (205, 62, 118), 3: (198, 58, 125), 4: (60, 200, 120)}
    engine = _engine(tmp_path, colours, colour_texts, calibration=None)
    closest = engine.counterfactuals(image=0, text="blue", mode="decrease", threshold=9.0, k=3)
    distinct = engine.counterfactuals(
        image=0, text="blue", mode="decrease", threshold=9.0, k=3, diversity=0.3
    )
    assert [i.id for i in closest.items][:2] != [i.id for i in distinct.items][:2]
    assert 4 in [i.id for i in distinct.items][:2]  # the other direction comes second
    assert closest.items[0].id == distinct.items[0].id  # the closest answer stays first
    assert np.all(np.diff([i.distance for i in closest.items]) >= 0)


def test_an_image_the_model_reads_as_a_rival_caption_is_weak(tmp_path, colour_texts) -> None:
    # "a red car" scores 7 for image 1 (p(match) 0.98 by this calibration), but the index also holds "a
    # blue car", one word away, which the same image scores 9: the model reads it as that one
    image = colour_vector(REDS[1])
    other = np.cross(image, [0.0, 0.0, 1.0])
    other /= np.linalg.norm(other)
    asked = 0.7 * image + np.sqrt(1 - 0.49) * other
    rival = 0.9 * image - np.sqrt(1 - 0.81) * other
    texts = {**colour_texts, "a red car": asked.astype(np.float32), "a blue car": rival.astype(np.float32)}
    captions = {10: ("a blue car", rival.astype(np.float32)), 11: ("a green tree", colour_texts["green"])}
    low_line = Calibration("captions", "colour-model", 2.0, -10.0, None, None, 0.99, "test")
    engine = _engine(tmp_path, {1: REDS[1]}, texts, captions=captions, calibration=low_line)
    result = engine.counterfactuals(image=0, text="a red car", threshold=5.0, k=1)
    [item] = result.items
    assert item.id == 1 and item.score_after == pytest.approx(7.0, abs=1e-3) and item.p_match > 0.9
    assert item.verdict == "weak" and item.rival == "a blue car"
    assert any("one word away ('a blue car')" in w for w in result.warnings)
    # without the rival caption in the index the same answer is verified (the index's captions still use
    # the text's words: a text whose words they never use is out of the calibration's domain)
    (tmp_path / "b").mkdir()
    known = {11: captions[11], 12: ("a small red car", asked.astype(np.float32))}
    plain = _engine(tmp_path / "b", {1: REDS[1]}, texts, captions=known, calibration=low_line)
    assert plain.counterfactuals(image=0, text="a red car", threshold=5.0, k=1).items[0].verdict == "verified"
