"""What a person sees in every output, rendered in headless Chromium: the three kinds of counterfactual
report, the explanation images of ``counterclip explain``, the classical explainers' files.

Each is checked in the DOM (or in the PNG's own text and pixels): titles present, a legend per map, the
verdicts, the swapped word marked, flip probabilities labelled, flags in words. The screenshots land in
``test-output/browser/`` for people to look at (20-... to 29-...).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from browser_kit import console_errors

pytest.importorskip("selenium")
from PIL import Image  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

from counterclip.cli import run  # noqa: E402
from counterclip.shapes import read_labels  # noqa: E402

VERDICTS = {"verified", "weak", "unverifiable"}


def css(driver, selector: str):
    return driver.find_elements(By.CSS_SELECTOR, selector)


def _bar(cmap: str, width: int) -> np.ndarray:
    """The pixels of a colour bar of ``width`` on ``cmap`` (unit 0 to 1 from left to right)."""
    from matplotlib import colormaps

    return (colormaps[cmap](np.linspace(0.0, 1.0, width))[:, :3] * 255).round().astype(int)


def _contains_run(pixels: np.ndarray, run_: np.ndarray) -> bool:
    """Whether some row of ``pixels`` holds ``run_`` (an ``(n, 3)`` run) exactly, anywhere along it."""
    n = len(run_)
    for row in pixels:
        starts = np.where((row[: len(row) - n + 1] == run_[0]).all(axis=1))[0]
        if any((row[s : s + n] == run_).all() for s in starts):
            return True
    return False


def show_file(page, path: Path) -> None:
    page.get(path.resolve().as_uri())
    assert console_errors(page) == []


def check_every_map_is_labelled(page) -> int:
    """Every map figure has a title; every coloured map has a legend (bar, ends, reading); returns how
    many maps there are."""
    for plain in css(page, "figure.cc-map.cc-plain"):  # a picture without colours: titled, no legend
        assert plain.find_element(By.TAG_NAME, "h4").text.strip()
        assert not plain.find_elements(By.CLASS_NAME, "cc-legend")
    figures = css(page, "figure.cc-map:not(.cc-plain)")
    for figure in figures:
        assert figure.find_element(By.TAG_NAME, "h4").text.strip(), figure.get_attribute("outerHTML")[:200]
        legends = figure.find_elements(By.CLASS_NAME, "cc-legend")
        assert len(legends) == 1, figure.find_element(By.TAG_NAME, "h4").text
        legend = legends[0]
        bar = legend.find_element(By.TAG_NAME, "img")
        assert page.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", bar)
        ends = [e.text for e in legend.find_elements(By.CSS_SELECTOR, ".cc-ends span")]
        assert len(ends) in (2, 3) and ends[0] in ("0", *[e for e in ends if e.startswith("\u2212")])
        assert legend.find_element(By.CLASS_NAME, "cc-reading").text.strip()
    return len(figures)


@pytest.fixture(scope="module")
def query(shapes_site):
    """The first shapes image, its attributes, and a text that changes its colour."""
    record = read_labels(shapes_site.folder)[0]
    colour = "blue" if record["colour"] != "blue" else "red"
    return {
        "path": shapes_site.folder / record["file"],
        "record": record,
        "asked": f"a {record['size']} {colour} {record['shape']}",
        "own": f"a {record['size']} {record['colour']} {record['shape']}",
        "other_colour": colour,
    }


@pytest.fixture(scope="module")
def reports(shapes_site, query, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """The three report kinds, each written by `counterclip counterfactual --report` (with its --json)."""
    folder = tmp_path_factory.mktemp("reports")
    index, image = str(shapes_site.index), str(query["path"])
    record = query["record"]
    runs = {
        "image-increase": ["--text", query["asked"]],
        "text-decrease": ["--text", query["own"], "--side", "text", "--mode", "decrease"],
        "flip": [
            "--mode",
            "flip",
            "--labels",
            f"a {record['colour']} {record['shape']},a {query['other_colour']} {record['shape']}",
            "--target",
            f"a {query['other_colour']} {record['shape']}",
        ],
    }
    out = {}
    for name, args in runs.items():
        path = folder / f"{name}.html"
        command = ["counterfactual", index, "--image", image, *args, "-k", "3", "--device", "cpu"]
        import contextlib
        import io

        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            assert run([*command, "--report", str(path), "--json"]) == 0
        out[name] = (path, json.loads(buffer.getvalue()))
    return out


def test_image_side_report(page, screenshot, reports, query) -> None:
    path, result = reports["image-increase"]
    show_file(page, path)
    assert result["items"], "the shapes index should answer a colour change"
    heading = page.find_element(By.TAG_NAME, "h1").text
    assert (
        heading
        == f"Images close to {query['path'].name} that the model finds more like \u201c{query['asked']}\u201d"
    )
    # the query at the top: its image, file, text and score
    top = page.find_element(By.CSS_SELECTOR, "section.query")
    assert str(query["path"]) in top.text and f"\u201c{query['asked']}\u201d" in top.text
    assert f"{result['validity']['original']:.2f}" in top.text
    # the rule in plain words, with its numbers; the calibration; what each verdict means
    rule = page.find_element(By.CSS_SELECTOR, ".rule .plain").text
    assert rule.startswith(f"An answer counts when it scores at least {result['validity']['threshold']:.2f}")
    assert f"the best image in the index scores {result['validity']['best']:.2f}" in rule
    assert result["calibration"] in page.find_element(By.CSS_SELECTOR, ".rule .calibration").text
    # each answer: beside the original, its verdict badge, score before -> after, why it counts
    answers = css(page, "div.answer")
    assert [int(a.get_attribute("data-id")) for a in answers] == [i["id"] for i in result["items"]]
    for answer, item in zip(answers, result["items"], strict=True):
        badge = answer.find_element(By.CSS_SELECTOR, ".facts .verdict")
        assert badge.text == item["verdict"] and badge.text in VERDICTS
        assert answer.find_element(By.CLASS_NAME, "numbers").text.startswith(
            f"score {item['score_before']:.2f} \u2192 {item['score_after']:.2f}"
        )
        assert f"scores {item['score_after']:.2f} for \u201c{query['asked']}\u201d" in answer.text
        pictures = answer.find_elements(By.CSS_SELECTOR, ".pair img")
        assert len(pictures) == 2  # the original beside the answer
        titles = [h.text for h in answer.find_elements(By.CSS_SELECTOR, "figure.cc-map h4")]
        asked = f"\u201c{query['asked']}\u201d"  # titled by what the map shows: a match, or not
        pair = (
            f"why it matches {asked}"
            if item["p_match"] >= 0.5
            else f"what in it counts toward {asked} (not a match)"
        )
        assert titles == [pair, "why this image rather than the original"]
        faith = answer.find_elements(By.CLASS_NAME, "cc-faith")
        assert len(faith) == 2 and all(f.text.startswith("faithfulness ") for f in faith)
    assert check_every_map_is_labelled(page) == 1 + 2 * len(answers)
    # baselines: shown once, labelled, collapsed by default
    details = page.find_element(By.CSS_SELECTOR, "details.baselines")
    assert details.get_attribute("open") is None
    assert "Baselines, for comparison" in details.find_element(By.TAG_NAME, "summary").text
    screenshot("20-report-image-side")


def test_text_side_report_marks_the_swapped_word(page, screenshot, reports, query) -> None:
    path, result = reports["text-decrease"]
    show_file(page, path)
    assert result["items"]
    from counterclip.report.words import changed_words

    for answer, item in zip(css(page, "div.answer"), result["items"], strict=True):
        assert answer.find_element(By.CSS_SELECTOR, ".facts .verdict").text == item["verdict"]
        removed, added = changed_words(query["own"], item["text"])
        marked = [m.text for m in answer.find_elements(By.CSS_SELECTOR, ".texts .now mark")]
        assert marked == [item["text"].split()[i] for i in added] and marked
        struck = [d.text for d in answer.find_elements(By.CSS_SELECTOR, ".texts .was del")]
        assert struck == [query["own"].split()[i] for i in removed]
        # the word row marks the same words among the model's tokens
        chips = answer.find_elements(By.CSS_SELECTOR, ".cc-tok.cc-changed .cc-word")
        assert {c.text for c in chips} <= set(marked) and chips
        assert answer.find_element(By.CSS_SELECTOR, ".cc-changed-label").text == "changed"
        background = chips[0].value_of_css_property("background-color")
        assert background.startswith("rgb")
    check_every_map_is_labelled(page)
    screenshot("21-report-text-side")


def test_flip_report_labels_the_probabilities(page, screenshot, reports, query) -> None:
    path, result = reports["flip"]
    show_file(page, path)
    target = result["query"]["target"]
    labels = result["query"]["labels"]
    bars = css(page, ".probs")
    assert len(bars) == 1 + len(result["items"])  # the original's and each answer's
    for block in bars:
        cells = [c.text for c in block.find_elements(By.XPATH, "./span")]
        names, values = cells[0::3], cells[2::3]
        assert sorted(names) == sorted(labels)
        assert all(re.fullmatch(r"\d\.\d{3}", v) for v in values)
        assert sum(float(v) for v in values) == pytest.approx(1.0, abs=0.01)
        assert block.find_element(By.CSS_SELECTOR, "span.target").text == target
    for answer, item in zip(css(page, "div.answer"), result["items"], strict=True):
        # the bar of the target is the engine's own p(target) for the answer (re-scored from its file)
        block = answer.find_element(By.CLASS_NAME, "probs")
        cells = [c.text for c in block.find_elements(By.XPATH, "./span")]
        shown = dict(zip(cells[0::3], (float(v) for v in cells[2::3]), strict=True))
        assert shown[target] == pytest.approx(item["score_after"], abs=0.01)
        assert max(shown, key=shown.get) == target  # the label flipped
        numbers = answer.find_element(By.CLASS_NAME, "numbers").text
        assert numbers.startswith(f"class probability of \u201c{target}\u201d")
    assert (
        "An answer counts when the model labels it" in page.find_element(By.CSS_SELECTOR, ".rule .plain").text
    )
    check_every_map_is_labelled(page)
    screenshot("22-report-flip")


METHODS = {
    "relevance": [],
    "gradcam": [],
    "ig": ["--steps", "8", "--modality", "image"],
    "lime": ["--samples", "64"],
    "pixel-cf": ["--steps", "12"],
}


@pytest.fixture(scope="module")
def explanation_pngs(query, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """``counterclip explain --out`` for every method on one shapes image (bundled model)."""
    import contextlib
    import io

    folder = tmp_path_factory.mktemp("explain")
    made = {}
    for method, extra in METHODS.items():
        target = folder / f"{method}.png"
        buffer = io.StringIO()
        args = ["explain", "--model", "bundled:shapes", "--image", str(query["path"]), "--text", query["own"]]
        with contextlib.redirect_stdout(buffer):
            assert run([*args, "--method", method, *extra, "--out", str(target), "--json"]) == 0
        made[method] = (target, json.loads(buffer.getvalue()))
    return made


def test_explanation_images(page, screenshot, explanation_pngs, query, tmp_path) -> None:
    rows = []
    for method, (png, payload) in explanation_pngs.items():
        with Image.open(png) as im:
            text = dict(im.text)
            size = im.size
        assert text["Title"].startswith(f"{method}: similarity to '{query['own']}'")
        description = text["Description"]
        assert "tile: the image" in description or "tile: the image: " in description
        assert "legend: " in description  # a colour bar with its range and meaning for every map
        if method == "pixel-cf":
            assert "tile: where the pixels changed (mean 8-bit levels)" in description
            assert "moved as asked" in description or "did NOT move as asked" in description
            assert payload["faithfulness"] is None
        else:
            assert f"tile: why it matches '{query['own']}'" in description
            assert "note: faithfulness " in description
            assert payload["faithfulness"]["verdict"] in (
                "better than random",
                "barely better than random",
                "no better than random",
                "not measurable",
            )
        rows.append(
            f"<h2>{method}</h2><img id='{method}' src='{png.as_uri()}' width='{size[0]}' height='{size[1]}'>"
        )
    gallery = tmp_path / "gallery.html"
    gallery.write_text("<!doctype html><meta charset='utf-8'><body>" + "".join(rows) + "</body>")
    show_file(page, gallery)
    for method, (png, _) in explanation_pngs.items():
        element = page.find_element(By.ID, method)
        natural = page.execute_script(
            "return [arguments[0].naturalWidth, arguments[0].naturalHeight]", element
        )
        with Image.open(png) as im:
            assert natural == list(im.size)
            pixels = np.asarray(im.convert("RGB")).astype(int)
        # the colour bar is in the picture: a run of pixels that is exactly the colour map from one
        # end to the other at the width of its tile (the 128-px image is shown at 256 px; a grey frame)
        found = any(_contains_run(pixels, _bar(cmap, 256)[1:-1]) for cmap in ("inferno", "RdBu_r"))
        assert found, method
    screenshot("23-explanation-images")


def test_explanation_figure_html(page, screenshot, query, tmp_path) -> None:
    """``Explanation.show()`` in a notebook: the same figure as HTML."""
    from counterclip.explainers import explain
    from counterclip.explainers.figure import FIGURE_CSS
    from counterclip.explainers.metrics import map_faithfulness
    from counterclip.models import load_model

    model = load_model("bundled:shapes", device="cpu")
    image = Image.open(query["path"]).convert("RGB")
    exp = explain(model, image, query["own"], method="relevance", modality="both")
    figure = exp.show(image, faithfulness=map_faithfulness(model, image, query["own"], exp.pixel_map))
    target = tmp_path / "figure.html"
    target.write_text(f"<!doctype html><meta charset='utf-8'><style>{FIGURE_CSS}</style>{figure.to_html()}")
    show_file(page, target)
    assert (
        page.find_element(By.CLASS_NAME, "cc-title").text
        == f"relevance: similarity to '{query['own']}' = {exp.score:.4g}"
    )
    titles = [h.text for h in css(page, "figure.cc-map h4")]
    assert titles[:2] == ["the image", f"why it matches '{query['own']}'"]
    words = [w.text for w in css(page, ".cc-tok .cc-word")]
    assert words == list(exp.tokens)
    assert check_every_map_is_labelled(page) == 2  # the map and the word row (the image has no legend)
    screenshot("24-explanation-figure-html")


def test_tiny_token_attributions_stay_pale(page, screenshot, tmp_path) -> None:
    """The text-classifier page: attributions of 0.0002 for a probability of 0.99 are nearly white,
    not saturated; a word that moves the score is coloured."""
    from counterclip.explainers.base import Explanation
    from counterclip.report.classic import token_html

    tiny = Explanation(
        "lime",
        "text",
        0.99,
        tokens=["a", "fine", "film"],
        token_map=np.array([0.0002, -0.0001, 0.0002]),
        explains="probability of 'POSITIVE' (label 1)",
    )
    strong = Explanation(
        "lime",
        "text",
        0.99,
        tokens=["a", "fine", "film"],
        token_map=np.array([0.01, 0.6, -0.2]),
        explains="probability of 'POSITIVE' (label 1)",
    )
    target = tmp_path / "tokens.html"
    target.write_text(token_html([tiny, strong], title="a fine film"))
    show_file(page, target)
    rows = css(page, "figure.cc-words")
    assert len(rows) == 2

    def colours(row) -> list[tuple[int, ...]]:
        values = [
            w.value_of_css_property("background-color") for w in row.find_elements(By.CLASS_NAME, "cc-word")
        ]
        return [tuple(int(v) for v in re.findall(r"\d+", c)[:3]) for c in values]

    assert all(min(c) >= 245 for c in colours(rows[0]))  # pale: nearly white
    assert "weak map" in rows[0].text
    fine = colours(rows[1])[1]
    assert fine[0] > fine[2] + 50 and min(fine) < 120  # "fine" raises the probability: strongly red
    check_every_map_is_labelled(page)
    screenshot("25-text-classifier-tokens")


def test_cnn_with_random_weights_says_so(page, screenshot, query, tmp_path) -> None:
    import contextlib
    import io

    out_dir = tmp_path / "cnn"
    buffer = io.StringIO()
    args = ["explain-cnn", str(query["path"]), "--arch", "resnet18", "--random-weights", "--size", "64"]
    with contextlib.redirect_stdout(buffer):
        assert run([*args, "--target", "1", "--target", "2", "--out", str(out_dir), "--json"]) == 0
    payload = json.loads(buffer.getvalue())
    assert any(flag.startswith("random weights") for flag in payload["flags"])
    for row, explanation in zip(payload["overlap_iou_top20"], payload["explanations"], strict=True):
        empty = max(abs(v) for v in np.ravel(explanation.get("patch_map") or [0.0])) == 0
        if empty:
            assert all(v is None for v in row)  # no region: the overlap is undefined, not 0
    panel = out_dir / "gradcam.png"
    with Image.open(panel) as im:
        text = dict(im.text)
    assert "random weights: the model learned nothing" in text["Description"]
    gallery = tmp_path / "cnn.html"
    images = "".join(f"<img src='{p.as_uri()}'>" for p in sorted(out_dir.glob("*.png")))
    gallery.write_text(f"<!doctype html><meta charset='utf-8'><body>{images}</body>")
    show_file(page, gallery)
    screenshot("26-cnn-random-weights")
