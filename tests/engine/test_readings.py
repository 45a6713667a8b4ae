"""Readings: the image side can order its answers by the things the index's captions read as changed.

A 3-d caption collection with hand-placed captions, so every reading (the content words of the 10
captions the model ranks highest) is known by brute force, and the order `ImageSide.proximity` gives is
checked against the order computed by hand: fewest things changed first, distance among equals, the
items beyond the reading pool after them by distance.
"""

from __future__ import annotations

import numpy as np
import pytest
from doubles import ArrayCollection, ColourModel, colour_texts_table, colour_vector, make_colour_index

from counterclip.engine import Engine, EngineOptions
from counterclip.engine.readings import READINGS, CaptionReader, reading_changes, reading_levels
from counterclip.engine.resources import GenerationState
from counterclip.engine.sides import ImageSide
from counterclip.engine.words import Substitutes, content_words
from counterclip.errors import InputError

COLOURS = {"red": (250, 20, 20), "orange": (250, 140, 20), "blue": (20, 20, 250), "green": (20, 220, 20)}


def _captions() -> dict[int, tuple[str, np.ndarray]]:
    """Eleven captions per colour word, each at that colour (two shapes): a vector's reading names its
    nearest colour, whatever the shape."""
    table = {}
    for n, (word, rgb) in enumerate(COLOURS.items()):
        for m in range(READINGS + 1):
            shape = "circle" if m % 2 else "square"
            table[100 * n + m] = (f"a {word} {shape}", colour_vector(rgb))
    return table


def _collection(tmp_path) -> ArrayCollection:
    return ArrayCollection("captions", tmp_path, _captions())


def _substitutes() -> Substitutes:
    return Substitutes([text for text, _ in _captions().values()])


def test_a_reading_is_the_words_of_the_nearest_captions_by_brute_force(tmp_path) -> None:
    table = _captions()
    ids = np.array(sorted(table))
    matrix = np.stack([table[i][1] for i in ids])
    reader = CaptionReader.of(_collection(tmp_path), _substitutes())
    queries = np.stack([colour_vector(rgb) for rgb in [(240, 60, 30), (30, 40, 230), (120, 200, 60)]])
    for vector, reading in zip(queries, reader.read(queries), strict=True):
        nearest = ids[np.argsort(-(matrix @ vector), kind="stable")[:READINGS]]
        assert reading == {w for i in nearest for w in content_words(table[int(i)][0])}
    assert reader.read(np.zeros((0, 3), np.float32)) == []


def test_a_larger_collection_is_read_through_a_fixed_sample(tmp_path) -> None:
    """Past ``sample`` captions the reader ranks a seeded sample of them, exactly (brute force over the
    same sample), and two readers of one collection agree."""
    table = _captions()
    ids = np.array(sorted(table))
    reader = CaptionReader.of(_collection(tmp_path), _substitutes(), sample=12)
    kept = np.sort(np.random.default_rng(0).choice(ids, 12, replace=False))
    assert len(reader.words) == 12
    matrix = np.stack([table[int(i)][1] for i in kept])
    vector = colour_vector((200, 90, 60))
    nearest = kept[np.argsort(-(matrix @ vector), kind="stable")[:READINGS]]
    assert reader.read(vector)[0] == {w for i in nearest for w in content_words(table[int(i)][0])}
    again = CaptionReader.of(_collection(tmp_path), _substitutes(), sample=12)
    assert again.read(vector) == reader.read(vector)


def test_reading_changes_count_substituted_words_once() -> None:
    substitutes = Substitutes(["a red circle", "a blue circle", "a red square"])
    assert reading_changes({"red", "circle"}, {"blue", "circle"}, substitutes) == [("red", "blue")]
    assert reading_changes({"red", "circle"}, {"blue", "square"}, substitutes) == [
        ("circle", "square"),
        ("red", "blue"),
    ]
    assert reading_changes({"red", "circle"}, {"red", "circle", "large"}, substitutes) == []


def _side(tmp_path, start, pool: int, asked: str, reader: CaptionReader | None = None) -> ImageSide:
    """An image side asked to gain the words of ``asked`` (an increase)."""
    reader = reader or CaptionReader.of(_collection(tmp_path), _substitutes())
    images = ArrayCollection("images", tmp_path, {})
    return ImageSide(images, np.asarray(start, np.float32), None, None, None, None, reader, pool, (asked, ""))


class ScriptedReader(CaptionReader):
    """Readings given by hand per vector (the changes are counted by the real substitutes)."""

    def __init__(self, readings: dict[bytes, set[str]], substitutes: Substitutes) -> None:
        super().__init__([], np.zeros((0, 3), np.float32), substitutes)
        self.readings = readings

    def read(self, vectors: np.ndarray) -> list[set[str]]:
        return [self.readings[row.astype(np.float32).tobytes()] for row in np.atleast_2d(vectors)]


def test_levels_by_hand() -> None:
    """Asked to gain "blue" and "circle": a change to either is the asked change; the rest count."""
    gain = frozenset({"blue", "circle"})
    changes = [
        [("red", "blue"), ("light", "dark")],  # the asked change and one more: level 1
        [],  # nothing changed as read: below every item that shows the asked change
        [("red", "blue")],  # only the asked change: level 0
        [("red", "green"), ("circle", "square")],  # losing a wanted word is no asked change: level 2
    ]
    assert reading_levels(changes, gain, frozenset()).tolist() == [1, 2, 0, 2]
    assert reading_levels([[], [("red", "green")]], gain, frozenset()).tolist() == [0, 0]  # none shows it
    # a decrease of "a red circle": losing "red" or "circle" is the asked change
    lose = frozenset({"red", "circle"})
    assert reading_levels([[("red", "blue")], [("light", "dark")]], frozenset(), lose).tolist() == [0, 1]
    assert reading_levels([], gain, frozenset()).tolist() == []


def test_the_order_by_hand(tmp_path) -> None:
    """The original reads "a small red circle on a light ground"; the text asks for "a blue circle".
    Candidates nearest first (A..F), readings given by hand, a pool of 5: C changes only the colour (level
    0), A and E one more thing each (level 1, A nearer), B changes nothing and D no asked thing (level 2, by
    distance), F lies beyond the pool (last although it reads as C does)."""
    substitutes = Substitutes(
        ["a small red circle light", "a small blue circle light", "a small green circle light"]
        + ["a large red circle light", "a small red square light", "a small red circle dark"]
    )
    original = {"small", "red", "circle", "light"}
    read = {
        "A": {"small", "blue", "circle", "dark"},
        "B": {"small", "red", "circle", "light"},
        "C": {"small", "blue", "circle", "light"},
        "D": {"small", "green", "square", "light"},
        "E": {"large", "blue", "circle", "light"},
        "F": {"small", "blue", "circle", "light"},
    }
    start = np.array([1.0, 0.0, 0.0], np.float32)
    angles = np.linspace(0.2, 1.2, len(read))  # A nearest, F farthest
    vectors = np.stack([[np.cos(t), np.sin(t), 0.0] for t in angles]).astype(np.float32)
    readings = {v.tobytes(): r for v, r in zip(vectors, read.values(), strict=True)}
    readings[start.tobytes()] = original
    side = _side(tmp_path, start, 5, "a blue circle", ScriptedReader(readings, substitutes))
    relevance, edits = side.proximity(np.arange(len(read)), vectors)
    names = list(read)
    assert edits is None
    assert [names[i] for i in np.argsort(-relevance, kind="stable")] == ["C", "A", "E", "B", "D", "F"]


def test_the_asked_change_comes_first(tmp_path) -> None:
    """Asked for "a red square" from an orange original, by real readings of the captions: only the red
    item shows the asked change, so it comes first though farthest; the orange one (no change read) and
    the green one (an unasked change) follow by distance."""
    start = (240, 175, 30)
    candidates = {1: (150, 220, 40), 2: (250, 50, 40), 3: (250, 150, 40)}  # cosine 0.765, 0.704, 0.983
    ids = np.array(list(candidates))
    vectors = np.stack([colour_vector(rgb) for rgb in candidates.values()])
    side = _side(tmp_path, colour_vector(start), pool=3, asked="a red square")
    reader = side.reader
    original = reader.read(colour_vector(start))[0]
    assert [reader.changes(original, r) for r in reader.read(vectors)] == [
        [("orange", "green")],
        [("orange", "red")],
        [],
    ]
    relevance, _ = side.proximity(ids, vectors)
    assert list(ids[np.argsort(-relevance, kind="stable")]) == [2, 3, 1]


def test_without_a_reader_the_order_is_the_cosine(tmp_path) -> None:
    vectors = np.stack([colour_vector(rgb) for rgb in COLOURS.values()])
    side = ImageSide(ArrayCollection("images", tmp_path, {}), colour_vector((250, 120, 40)), None, None, None)
    relevance, edits = side.proximity(np.arange(4), vectors)
    assert edits is None and np.allclose(relevance, vectors @ colour_vector((250, 120, 40)))


def test_the_engine_orders_by_readings_only_where_the_index_holds_captions(tmp_path, monkeypatch) -> None:
    """Answers for "red" from an orange-ish original: an orange-red item nearest, reds farther; with
    captions that read colours, the answers the captions read as red (one thing changed) still come in
    distance order, and the stated order says how it was made; a bad setting is refused by name. The
    readings order is asked for (the default is the distance).

    Four images are too few for the test of whether the readings hold (`test_readings_that_do_not_hold_
    order_nothing` meets it on a real model): here it is taken as passed."""
    colours = {0: (250, 150, 60), 1: (250, 60, 30), 2: (250, 30, 30), 3: (240, 20, 40)}
    index = make_colour_index(tmp_path, colours, _captions())
    opts = EngineOptions(k=3, diversity=0.0, image_proximity="readings")
    engine = Engine(index, ColourModel(colour_texts_table()), opts)
    assert engine.counterfactuals(image=0, text="red", threshold=8.0).order == "by distance to the original"
    monkeypatch.setattr(GenerationState, "readings_hold", lambda self, index, model: True)
    read = engine.counterfactuals(image=0, text="red", threshold=8.0)
    assert read.order.startswith("the asked change first, then fewest unasked things changed")
    embedding = engine.counterfactuals(image=0, text="red", threshold=8.0, image_proximity="embedding")
    assert embedding.order == "by distance to the original"
    assert [i.id for i in read.items] == [i.id for i in embedding.items]  # all read as one change: distance
    with pytest.raises(InputError, match="image_proximity must be readings or embedding"):
        engine.counterfactuals(image=0, text="red", image_proximity="pixels")
    (tmp_path / "bare").mkdir()
    bare_index = make_colour_index(tmp_path / "bare", colours)  # no captions: nothing reads the images
    bare = Engine(bare_index, ColourModel(colour_texts_table()), opts)
    assert bare.counterfactuals(image=0, text="red", threshold=8.0).order == "by distance to the original"
