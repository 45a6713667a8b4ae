"""Baselines: the nearest unlike neighbour is the item nearest the original that the model decides about
differently (p(match) >= 0.5 toward the goal), found without the target path or the verified line.

Colour world (score = 10 * cos(image colour, text colour)) with a calibration whose decision line is at
score 8: which item is the nearest unlike neighbour is known by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
from doubles import ColourModel, colour_vector, make_colour_index

from counterclip.calibration import Calibration, ScoreSummary
from counterclip.engine import Engine, EngineOptions

LINE = 8.0  # p(match) = 0.5 at score 8
CALIBRATION = Calibration(
    "captions", "colour-model", 2.0, -2.0 * LINE, ScoreSummary(50, 9.0, 9.6, 10.0), None, 0.99, "test"
)
ORIGINAL = (90, 90, 200)  # blue-ish: no match for "red"
COLOURS = {
    1: (250, 20, 20),  # red: a match, far from the original
    2: (240, 40, 30),
    3: (200, 30, 60),
    4: (230, 60, 20),
    5: (60, 50, 240),  # blue: the original's near copy, no match
    6: (230, 40, 120),  # pink: score 8.45, p(match) 0.71, nearer the original than any red
    7: (220, 60, 160),  # magenta: nearer still, but score 6.2 (p 0.03): the model says no match
}


def _engine(tmp_path, colour_texts, calibration=CALIBRATION) -> Engine:
    index = make_colour_index(tmp_path, {0: ORIGINAL, **COLOURS})
    index.calibration = calibration
    return Engine(index, ColourModel(colour_texts), EngineOptions(k=3, diversity=0.0))


def _score(rgb, text_vector) -> float:
    return 10.0 * float(colour_vector(rgb) @ text_vector)


def _nearest(ids, e0) -> int:
    return max(ids, key=lambda i: float(colour_vector(COLOURS[i]) @ e0))


def test_nearest_unlike_neighbour_is_the_nearest_item_the_model_calls_a_match(tmp_path, colour_texts) -> None:
    engine = _engine(tmp_path, colour_texts)
    red, e0 = colour_texts["red"], colour_vector(ORIGINAL)
    result = engine.counterfactuals(image=0, text="red", threshold=9.0)
    p = {i: float(CALIBRATION.probability(_score(rgb, red))) for i, rgb in COLOURS.items()}
    decided = [i for i in COLOURS if p[i] >= 0.5]
    assert sorted(decided) == [1, 2, 3, 4, 6]
    (nun,) = result.baselines["nearest_unlike_neighbour"]
    assert nun.id == _nearest(decided, e0) == 6
    # judged by the answers' rules: a match by the decision, below the verified line
    assert nun.p_match == pytest.approx(p[6], abs=1e-4) and 0.5 <= nun.p_match < 0.9
    assert nun.verdict == "weak" and "below the verified line" in nun.reason
    assert nun.distance == pytest.approx(1.0 - float(colour_vector(COLOURS[6]) @ e0), abs=1e-5)
    # the engine's answers pass the rule (score >= 9) and the verified line: reds, nearest first
    reds = [1, 2, 3, 4]
    assert [item.id for item in result.items] == sorted(
        reds, key=lambda i: -float(colour_vector(COLOURS[i]) @ e0)
    )[:3]
    assert all(item.verified for item in result.items)
    # the first valid match of the text ignores the original: the reddest item
    assert [x.id for x in result.baselines["first_valid_text_match"]] == [
        max(reds, key=lambda i: _score(COLOURS[i], red))
    ]


def test_decrease_nearest_unlike_neighbour_is_the_nearest_the_model_calls_no_match(
    tmp_path, colour_texts
) -> None:
    engine = _engine(tmp_path, colour_texts)
    red = colour_texts["red"]
    result = engine.counterfactuals(image=1, text="red", mode="decrease", threshold=0.0)
    e1 = colour_vector(COLOURS[1])
    original = _score(COLOURS[1], red)
    others = {0: ORIGINAL, **{i: c for i, c in COLOURS.items() if i != 1}}
    unlike = [
        i for i, rgb in others.items()
        if CALIBRATION.probability(_score(rgb, red)) < 0.5 and _score(rgb, red) < original
    ]  # fmt: skip
    expected = max(unlike, key=lambda i: float(colour_vector(others[i]) @ e1))
    assert [x.id for x in result.baselines["nearest_unlike_neighbour"]] == [expected] == [7]


def test_a_changed_file_gives_way_to_the_next_unlike_neighbour(tmp_path, colour_texts) -> None:
    from PIL import Image

    engine = _engine(tmp_path, colour_texts)
    Image.new("RGB", (8, 8), (0, 255, 0)).save(tmp_path / "img006.png")  # the pink file changed
    result = engine.counterfactuals(image=0, text="red", threshold=9.0)
    e0 = colour_vector(ORIGINAL)
    assert [x.id for x in result.baselines["nearest_unlike_neighbour"]] == [_nearest([1, 2, 3, 4], e0)]


def test_without_a_calibration_the_rule_stands_in_for_the_decision(tmp_path, colour_texts) -> None:
    engine = _engine(tmp_path, colour_texts, calibration=None)
    red, e0 = colour_texts["red"], colour_vector(ORIGINAL)
    result = engine.counterfactuals(image=0, text="red", threshold=8.0)
    valid = [i for i, rgb in COLOURS.items() if _score(rgb, red) >= 8.0]
    assert [x.id for x in result.baselines["nearest_unlike_neighbour"]] == [_nearest(valid, e0)] == [6]
    assert np.isclose(result.baselines["nearest_unlike_neighbour"][0].score_after, _score(COLOURS[6], red))


def test_no_neighbour_when_nothing_in_the_index_is_a_match(tmp_path, colour_texts) -> None:
    blues = {5: (60, 50, 240), 7: (220, 60, 160)}  # nothing scores past the decision line for "red"
    index = make_colour_index(tmp_path, {0: ORIGINAL, **blues})
    index.calibration = CALIBRATION
    engine = Engine(index, ColourModel(colour_texts), EngineOptions(k=3, diversity=0.0))
    result = engine.counterfactuals(image=0, text="red", threshold=5.0)
    assert result.baselines["nearest_unlike_neighbour"] == []
    assert max(CALIBRATION.probability(_score(rgb, colour_texts["red"])) for rgb in blues.values()) < 0.5
