"""The counterfactual HTML report: one self-contained file that says what the result holds in words."""

from __future__ import annotations

import base64
import io
import re

from PIL import Image

from counterclip.engine.results import VERDICTS
from counterclip.report.html import VERDICT_WORDS, counterfactual_report, rule_in_words, write_text_atomic
from counterclip.report.words import changed_words, marked_html, token_positions


def _item(**fields) -> dict:
    item = {
        "id": 3,
        "kind": "image",
        "path": "a.png",
        "text": None,
        "score_before": 7.2,
        "score_after": 15.0,
        "delta": 7.8,
        "distance": 0.12,
        "rank": 1,
        "verified": True,
        "verdict": "verified",
        "p_match": 0.97,
        "step": 2,
        "probabilities": None,
        "word_edits": None,
    }
    item.update(fields)
    return item


def _result(**fields) -> dict:
    result = {
        "side": "image",
        "mode": "increase",
        "text": "a blue cross",
        "query": {"image": {"path": "/photos/q.png", "id": 0}, "text": "a blue cross"},
        "validity": {
            "rule": "score >= 13.000 (...)",
            "threshold": 13.0,
            "best": 15.4,
            "typical": 1.2,
            "original": 7.2,
        },
        "items": [_item()],
        "baselines": {
            "nearest_unlike_neighbour": [_item(rank=1)],
            "closest_valid_in_top50": [
                _item(id=9, kind="caption", path=None, text="a <red> circle", verdict="weak")
            ],
        },
        "stale": [{"id": 5, "path": "old.png", "text": None, "reason": "changed since indexing"}],
        "warnings": ["nothing in the index matches 'a blue cross' well"],
        "calibration": "model calibration (shapes world)",
        "candidates": 17,
        "timings": {"total": 0.0123},
    }
    result.update(fields)
    return result


def test_report_is_self_contained_and_says_it_in_words(tmp_path) -> None:
    Image.new("RGB", (40, 20), (200, 10, 10)).save(tmp_path / "a.png")
    html = counterfactual_report(
        _result(), tmp_path, query_image=Image.new("RGB", (30, 30), (0, 0, 255)), captions={3: ["a blue one"]}
    )
    sources = re.findall(r'src="([^"]+)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)  # nothing external
    thumbs = [Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))) for s in sources]
    assert any(t.size == (160, 80) and t.getpixel((80, 40)) == (200, 10, 10) for t in thumbs)  # aspect kept
    # the question, the query and the rule in plain words with the numbers it compares against
    assert (
        "<title>Images close to q.png that the model finds more like \u201ca blue cross\u201d</title>" in html
    )
    assert (
        "An answer counts when it scores at least <b>13.00</b> for \u201ca blue cross\u201d and more than the "
        "original (7.20). For comparison: the best image in the index scores 15.40; a typical one 1.20; "
        "the original 7.20."
    ) in html
    # each answer: verdict badge, score before -> after, why it counts with its own numbers
    assert '<span class="verdict verified"' in html and "score 7.20 &rarr; <b>15.00</b>" in html
    assert (
        "scores 15.00 for \u201ca blue cross\u201d (needs \u2265 13.00); the best image in the index scores "
        "15.40; the original 7.20; p(match) 0.97"
    ) in html
    assert "\u201ca blue one\u201d" in html  # the answer's caption from the index
    assert "model calibration (shapes world)" in html and "matches &#x27;a blue cross&#x27; well" in html
    # baselines: collapsed, labelled, an answer is not shown twice
    baselines = html[html.index('<details class="baselines">') :]
    assert "<summary>Baselines, for comparison (shown once each)</summary>" in baselines
    assert "the same as answer #1" in baselines and baselines.count("<img") == 0
    assert "a &lt;red&gt; circle" in html and "<red>" not in html  # user text is escaped
    assert "old.png" in html and "changed since indexing" in html and "12.3 ms" in html


def test_every_verdict_has_words_for_a_reader() -> None:
    assert set(VERDICTS) <= set(VERDICT_WORDS)
    assert all(set(words) == {"image", "caption"} for words in VERDICT_WORDS.values())


def test_rule_in_words_for_decrease_flip_and_a_user_threshold() -> None:
    decrease = _result(
        mode="decrease",
        side="text",
        validity={"rule": "score <= 8.9", "threshold": 8.94, "best": 14.9, "typical": -9.0, "original": 14.5},
    )
    assert rule_in_words(decrease).startswith(
        "An answer counts when it scores at most <b>8.94</b> with the image and less than the original (14.50)."
    )
    assert "the best caption in the index scores 14.90" in rule_in_words(decrease)
    user = _result(validity={"rule": "score >= 10.000 (user threshold)", "threshold": 10.0, "original": 3.0})
    assert "at least <b>10.00</b> (your threshold)" in rule_in_words(user)
    flip = _result(
        mode="flip",
        text=None,
        query={"labels": ["a cat", "a dog"], "target": "a dog", "predicted": "a cat"},
        validity={"rule": "predicted label becomes 'a dog'", "target": "a dog", "original": 0.12},
    )
    assert rule_in_words(flip) == (
        "An answer counts when the model labels it \u201ca dog\u201d: that label must become the most probable "
        "of the 2 labels. The original is labelled \u201ca cat\u201d, with class probability of \u201ca dog\u201d = 0.120."
    )


def test_flip_answers_show_labelled_probability_bars(tmp_path) -> None:
    item = _item(probabilities={"a cat": 0.3, "a dog": 0.7}, score_before=0.12, score_after=0.7)
    flip = _result(
        mode="flip",
        text=None,
        items=[item],
        baselines={},
        query={"labels": ["a cat", "a dog"], "target": "a dog", "predicted": "a cat"},
        validity={"rule": "predicted label becomes 'a dog'", "target": "a dog", "original": 0.12},
    )
    html = counterfactual_report(flip, tmp_path, query_probabilities={"a cat": 0.88, "a dog": 0.12})
    bars = re.findall(r'<div class="probs"[^>]*>(.*?)</div>', html)
    assert len(bars) == 2  # the original's and the answer's
    assert bars[0].index("a cat") < bars[0].index("a dog")  # most probable first
    assert '<span class="target">a dog</span>' in bars[1] and '<span class="target">0.700</span>' in bars[1]
    assert 'style="width:70.0%"' in bars[1]
    assert "class probability of \u201ca dog\u201d 0.120 &rarr; <b>0.700</b>" in html


def test_text_side_marks_the_swapped_word(tmp_path) -> None:
    caption = _item(kind="caption", path=None, text="a large blue cross", word_edits=1)
    result = _result(side="text", mode="decrease", text="a large green cross", items=[caption], baselines={})
    html = counterfactual_report(result, tmp_path)
    assert '<span class="was">a large <del>green</del> cross</span>' in html
    assert '<span class="now">a large <mark>blue</mark> cross</span>' in html
    assert "1 word(s) changed" in html


def test_changed_words_and_their_tokens() -> None:
    assert changed_words("a large green cross", "a large blue cross") == ([2], [2])
    assert changed_words("a red circle", "a red circle on the left") == ([], [3, 4, 5])
    assert changed_words("A Red circle.", "a red circle") == ([], [])  # case and punctuation are not changes
    assert marked_html("a <b> c", [1], "mark") == "a <mark>&lt;b&gt;</mark> c"
    # BPE pieces of one word are all marked; special tokens are skipped
    tokens = ["<start_of_text>", "a", "squ", "are</w>", "here", "<end_of_text>"]
    assert token_positions(tokens, "a square here", [1]) == (2, 3)
    assert token_positions(["a", "blue", "circle"], "a blue circle", [1]) == (1,)
    assert token_positions(["x", "y"], "a b", [0]) == ()  # tokens that do not spell the text: no marks


def test_write_text_atomic(tmp_path) -> None:
    target = write_text_atomic(tmp_path / "sub" / "r.html", "hello")
    assert target.read_text() == "hello"
