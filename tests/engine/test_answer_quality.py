"""The quality card of counterfactual answers (``quality=True``): each measure against a case whose answer
is known, on a small shapes index with the bundled model."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from counterclip.client import counterfactual_result_from_dict
from counterclip.engine import Engine, posing, request
from counterclip.engine import quality_measures as measures
from counterclip.engine import quality_stability as stability
from counterclip.engine.quality_measures import Answer
from counterclip.engine.readings import reading_changes
from counterclip.engine.results import ResultItem
from counterclip.engine.verdicts import Evidence
from counterclip.engine.words import Substitutes
from counterclip.quality import QUALITIES

TEXT = "a small purple cross on the left"  # the first image is a small red cross on the left


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from counterclip.index_builder import build_index
    from counterclip.shapes import generate_folder, vocabulary

    root = tmp_path_factory.mktemp("quality")
    generate_folder(root / "shapes", n=120, seed=3, size=64)
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(vocabulary()) + "\n", encoding="utf-8")
    build_index(
        root / "shapes", root / "idx", model="bundled:shapes", vocab=vocab, device="cpu", progress=False
    )
    with Engine.open(root / "idx", device="cpu") as opened:
        yield opened


@pytest.fixture(scope="module")
def query(engine) -> dict:
    first = engine.index.image_id_for_path(engine.index.root / "000000.png")
    return {"image": first, "text": TEXT, "mode": "increase"}


def _posed(engine: Engine, **asked):
    res = engine.resources()
    opts = engine.options
    query = {"text": None, "side": "image", "mode": "increase", "labels": None, "target": None, **asked}
    return res, posing.pose(res, request.resolve(res, opts, **query), opts)


def test_a_plain_query_has_no_card_and_costs_nothing_more(engine, query) -> None:
    result = engine.counterfactuals(k=3, **query)
    assert result.quality is None
    assert "quality" not in result.to_dict() and "quality" not in result.timings


def test_every_answer_gets_a_card_with_references_and_counted_passes(engine, query) -> None:
    result = engine.counterfactuals(k=3, quality=True, **query)
    graded = result.quality
    assert graded is not None and len(graded.answers) == len(result.items) > 0
    assert set(graded.references) == {"nearest_unlike_neighbour", "random_valid_item"}
    for card, item in zip(graded.answers, result.items, strict=True):
        assert f"id {item.id}" in card.subject
        assert all(card.measures()[q].definition for q in QUALITIES)
        assert card.faithfulness.reference_name == "nearest unlike neighbour"
    assert graded.perturbations == ("jpeg", "noise", "paraphrase")
    # re-encoded: the k answers, the two references and the original, the random item once more when it
    # was drawn; the perturbed queries: image and text (jpeg, noise), the text (paraphrase)
    assert graded.forward_passes == len(result.items) + 2 + 1 + 1 + 5
    assert "quality" in result.timings
    again = counterfactual_result_from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.quality == graded


def test_the_model_itself_reproduces_the_claimed_change_and_a_blind_model_does_not(engine, query) -> None:
    res, posed = _posed(engine, **query)
    result = engine.counterfactuals(k=3, **query)
    answers = [Answer(f"#{i.rank}", i, engine.index.images.vectors([i.id])[0]) for i in result.items]
    true = measures.faithfulness(res, posed, answers, measures.CountingEncoder(res.model))
    assert all(r.value == pytest.approx(1.0, abs=1e-3) for r in true)

    class Blind(measures.CountingEncoder):  # sees every image as the original: no change at all
        def encode_pil(self, images):
            self.count(len(images))
            return np.repeat(posed.side.start[None], len(images), axis=0)

    blind = measures.faithfulness(res, posed, answers, Blind(res.model))
    assert all(r.value == 0.0 for r in blind)
    assert blind[0].details["rescored_change"] == 0.0


def test_fewer_changes_read_fewer_words() -> None:
    one = measures._words_changed("a large red circle on the left", "a large blue circle on the left")
    assert one.value == 1.0 and one.details == {"removed": ["red"], "added": ["blue"]}
    two = measures._words_changed("a large red circle", "a small blue circle")
    assert two.value == 2.0
    substitutes = Substitutes(["a red circle", "a blue circle", "a red square", "a small circle"])
    changes = reading_changes({"red", "circle", "large"}, {"blue", "circle"}, substitutes)
    assert changes == [("red", "blue")]  # "large" is not said of the answer: not a change
    # the card counts the things changed besides the asked change, and names that one apart
    blue = frozenset({"blue", "circle"})
    read = measures._reading_changes([("red", "blue"), ("light", "dark")], blue, frozenset())
    assert read.value == 1.0 and read.details["asked"] == [["red", "blue"]]
    assert read.sentence == "1 other thing changed (light -> dark); the asked change: red -> blue"
    missed = measures._reading_changes([], blue, frozenset())  # the readings do not see the asked change
    assert missed.value == 0.0 and missed.sentence.endswith("the captions do not read the asked change in it")
    lost = measures._reading_changes([("red", "blue")], frozenset(), frozenset({"red", "circle"}))  # decrease
    assert lost.value == 0.0 and lost.details["asked"] == [["red", "blue"]]
    image = Image.new("RGB", (64, 64), (20, 20, 20))
    half = image.copy()
    half.paste((250, 250, 250), (0, 0, 32, 64))
    assert measures.picture_change(image, image) == 0.0
    assert measures.picture_change(image, half) == pytest.approx(0.5)


def test_completeness_is_the_share_of_the_gap_to_the_verified_line(engine, query) -> None:
    _, posed = _posed(engine, **query)
    evidence = Evidence(None, before=0.1)
    items = [ResultItem(id=1, kind="image", p_match=p) for p in (0.9, 0.5, 0.05)]
    answers = [Answer("a", item, posed.side.start) for item in items]
    readings = measures.completeness(posed, answers, evidence)
    assert [r.value for r in readings] == pytest.approx([1.0, 0.5, 0.0])
    settled = measures.completeness(posed, answers[:1], Evidence(None, before=0.95))
    assert settled[0].value is None  # already a match: nothing to close


def test_contrastivity_is_nothing_for_the_original_and_most_at_the_goal(engine, query) -> None:
    res, posed = _posed(engine, **query)
    item = ResultItem(id=1, kind="image")
    itself = Answer("original", item, posed.side.start)
    at_goal = Answer("goal", item, posed.criterion.fixed)
    readings = measures.contrastivity(res, posed, [itself, at_goal])
    assert readings[0].value == pytest.approx(0.0)
    assert readings[1].value > 0.5 and readings[1].details["goal"] == repr(TEXT)


def test_the_same_query_again_is_fully_stable_and_a_shuffled_answer_list_is_less(
    engine, query, monkeypatch
) -> None:
    for name in ("jpeg_copy", "noisy_copy", "paraphrase"):
        monkeypatch.setattr(stability, name, lambda value, *a, **k: value)
    several = {"image": query["image"], "text": "a small red cross on the left", "mode": "decrease"}
    same = engine.counterfactuals(k=4, quality=True, **several).quality
    assert same.summary.stability.value == 1.0
    assert all(card.stability.value == 1.0 for card in same.answers)
    original = stability._answers

    def shuffled(*args, **kwargs):
        found = original(*args, **kwargs)
        return dataclasses.replace(found, ids=found.ids[::-1])

    monkeypatch.setattr(stability, "_answers", shuffled)
    reordered = engine.counterfactuals(k=4, quality=True, **several).quality
    assert len(reordered.answers) > 1
    assert reordered.summary.stability.value < same.summary.stability.value
    assert all(card.stability.value == 1.0 for card in reordered.answers)  # each still comes back


def test_paraphrases_keep_the_content_words() -> None:
    from counterclip.engine.words import content_words

    for text in ("a red circle", "a photo of a red circle", "An image of a small star at the top"):
        assert content_words(stability.paraphrase(text)) == content_words(text)
        assert stability.paraphrase(text) != text


def test_text_side_and_flip_get_cards_too(engine, query) -> None:
    text = engine.counterfactuals(
        image=query["image"],
        text="a small red cross on the left",
        side="text",
        mode="decrease",
        k=2,
        quality=True,
    )
    assert text.quality is not None and len(text.quality.answers) == len(text.items)
    assert text.quality.answers[0].understandability.definition.startswith("content words changed")
    flip = engine.counterfactuals(
        image=query["image"],
        mode="flip",
        labels=["a red shape", "a green shape", "a blue shape"],
        k=2,
        quality=True,
    )
    assert flip.quality is not None and flip.quality.answers
    assert "rather than" in flip.quality.answers[0].contrastivity.sentence
