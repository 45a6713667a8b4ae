"""What the API says beside its numbers, in the words the report and the CLI use: each score named for its
kind of pair with its scale and range, the original's reading (settled first), the heading with the real
order, flip with no target taking the runner-up, uploads refused in people's words, and the downloaded
report of a flip with its label bars and the legend of the numbers."""

from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient
from server_kit import LOCAL

from counterclip.report.reading import answers_heading, original_reading, pair_map_title, result_numbers
from counterclip.scores import PairScore, number_words, pair_kind, score_words
from counterclip.server.app import create_app


@pytest.fixture(scope="module")
def client(shapes_engine):
    with TestClient(create_app(shapes_engine), base_url=LOCAL) as c:
        yield c


def test_a_search_names_its_score_by_the_kind_of_pair(client, shapes_engine) -> None:
    scale = shapes_engine.pair_score.scale
    by_text = client.post("/search", json={"text": "a red circle", "k": 3}).json()
    assert by_text["numbers"]["score"].startswith(
        f"the model's image\u2013text score, {scale:.1f} \u00d7 cosine"
    )
    assert f"from {-scale:.1f} (opposite) to {scale:.1f}" in by_text["numbers"]["score"]
    assert "p(match)" in by_text["numbers"] and all(i["p_match"] is not None for i in by_text["items"])
    captions = client.post("/search", json={"text": "a red circle", "k": 3, "collection": "captions"}).json()
    assert "text\u2013text score" in captions["numbers"]["score"] and "p(match)" not in captions["numbers"]
    by_image = client.post("/search", json={"image": {"id": 3}, "k": 3}).json()
    assert "image\u2013image score" in by_image["numbers"]["score"] and "p(match)" not in by_image["numbers"]
    assert [pair_kind(True, "images"), pair_kind(False, "captions")] == ["image-text", "image-text"]


def test_a_counterfactual_carries_its_reading_in_words(client, shapes_engine) -> None:
    body = {"image": {"id": 3}, "text": "a red circle", "k": 3}
    answer = client.post("/counterfactual", json=body).json()
    assert answer["reading"]["original"] == original_reading(answer)
    assert answer["reading"]["heading"] == answers_heading(answer, len(answer["items"]))
    assert answer["reading"]["heading"].endswith(answer["order"])  # the real order, as the engine states it
    assert answer["numbers"] == result_numbers(answer, shapes_engine.pair_score)
    assert set(answer["baseline_words"]) == {
        "nearest_unlike_neighbour",
        "first_valid_text_match",
        "closest_valid_in_top",
    }


def test_flip_without_a_target_takes_the_runner_up(client) -> None:
    labels = ["a red shape", "a green shape", "a blue shape"]
    answer = client.post(
        "/counterfactual", json={"image": {"id": 3}, "mode": "flip", "labels": labels}
    ).json()
    query = answer["query"]
    probabilities = query["class_probabilities"]
    runner_up = sorted((p, label) for label, p in probabilities.items() if label != query["predicted"])[-1][1]
    assert query["target"] == runner_up and query["target_chosen"]
    assert answer["reading"]["target_note"] == (
        f"No target label was given: the target is \u201c{runner_up}\u201d, the most likely label other than "
        f"the predicted \u201c{query['predicted']}\u201d."
    )
    assert (
        "class probability" in answer["numbers"] and "class probability of" in answer["reading"]["original"]
    )


def test_a_broken_upload_is_refused_in_people_words(client) -> None:
    broken = base64.b64encode(b"\x89PNG\r\n\x1a\nnot really a picture").decode()
    response = client.post("/search", json={"image": {"base64": broken}})
    detail = response.json()["detail"]
    assert response.status_code == 422 and detail.startswith("the uploaded file is not a usable image")
    assert "base64" not in detail and "PNG, JPEG" in detail
    garbled = client.post("/search", json={"image": {"base64": "not base64!"}}).json()["detail"]
    assert garbled.startswith("the upload did not arrive as a file")


def test_the_flip_report_has_its_bars_and_the_numbers_legend(client) -> None:
    labels = ["a red shape", "a green shape", "a blue shape"]
    body = {"image": {"id": 3}, "mode": "flip", "labels": labels, "k": 2, "maps": False}
    html = client.post("/report", json=body).text
    assert '<div class="probs"' in html  # the original's label probabilities, as the CLI's report has
    assert "How to read the numbers" in html and "class probability" in html and "0 (same) to 2" in html


def test_the_words_themselves() -> None:
    score = PairScore(scale=35.2, bias=-1.5)
    assert score_words(score, "image-image") == (
        "the model's image\u2013image score, 35.2 \u00d7 cosine - 1.5: from -36.7 (opposite) to 33.7 (same "
        "direction); comparable only within one model and one kind of pair"
    )
    assert list(number_words(score, "image-text", flip=True)) == [
        "class probability",
        "score",
        "p(match)",
        "distance",
    ]
    assert pair_map_title("a cat", 0.97) == "why it matches \u201ca cat\u201d"
    assert (
        pair_map_title("a cat", 0.1, "the original")
        == "what in the original counts toward \u201ca cat\u201d (not a match)"
    )
    assert pair_map_title(None, None) == "what in it counts toward the text"
