"""The quality card where people look: beside each answer and under each map in the web app, and in the
HTML report, in a real headless Chromium; the numbers shown are the API's (the oracle). Screenshots:
``test-output/browser/30-quality-*.png``."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from browser_kit import console_errors, wait_for

pytest.importorskip("selenium")
from selenium.webdriver.common.by import By  # noqa: E402

from counterclip.cli import run  # noqa: E402
from counterclip.quality import QUALITIES  # noqa: E402
from counterclip.shapes import read_labels  # noqa: E402


def css(driver, selector: str):
    return driver.find_elements(By.CSS_SELECTOR, selector)


def _shown(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


@pytest.fixture(scope="module")
def asked(shapes_site) -> tuple[int, str]:
    """The first image of the site and a text that changes its colour to one the site holds for its shape
    and size (so the answers really match)."""
    records = read_labels(shapes_site.folder)
    record = records[0]
    other = next(
        r
        for r in records
        if (r["shape"], r["size"]) == (record["shape"], record["size"]) and r["colour"] != record["colour"]
    )
    return record, f"a {record['size']} {other['colour']} {record['shape']}"


def test_the_web_app_shows_a_card_beside_each_answer_and_map(page, live_server, asked, screenshot) -> None:
    record, text = asked
    image_id = live_server.api("/search", {"text": record["caption"], "k": 1})["items"][0]["id"]
    page.get(f"{live_server.url}/?image={image_id}")
    wait_for(page, lambda d: f"index id {image_id}" in d.find_element(By.ID, "original").text, 60, "original")
    box = page.find_element(By.ID, "cf-quality")
    assert not box.is_selected()
    box.click()
    field = page.find_element(By.ID, "cf-text")
    field.clear()
    field.send_keys(text)
    page.find_element(By.ID, "cf-go").click()
    wait_for(page, lambda d: css(d, "#cf-results .answer .qcard"), 120, "quality cards")
    expected = live_server.api(
        "/counterfactual",
        {
            "image": {"id": image_id},
            "text": text,
            "side": "image",
            "mode": "increase",
            "k": 5,
            "quality": True,
        },
    )
    answers = css(page, "#cf-results > .answers > .answer")
    assert len(answers) == len(expected["quality"]["answers"]) > 0
    for shown, card in zip(answers, expected["quality"]["answers"], strict=True):
        rows = shown.find_elements(By.CSS_SELECTOR, ".qcard .qcard-row")
        assert [r.find_element(By.CLASS_NAME, "qcard-name").text for r in rows] == list(QUALITIES)
        for row, name in zip(rows, QUALITIES, strict=True):
            assert row.find_element(By.CLASS_NAME, "qcard-value").text == _shown(card[name]["value"])
            assert card[name]["definition"] in row.get_attribute("title")  # explained on hover
    screenshot("30-quality-answers")
    answers[0].find_element(By.CSS_SELECTOR, "button.maps").click()
    wait_for(page, lambda d: css(d, "#maps-body .map .qcard"), 180, "map quality cards")
    maps = css(page, "#maps-body figure.map")
    graded = [m for m in maps if m.find_elements(By.CLASS_NAME, "qcard")]
    assert len(graded) == 2  # why it matches, why it rather than the original (the pictures have none)
    screenshot("31-quality-maps")
    assert console_errors(page) == []


def test_the_report_shows_each_answers_card_and_the_summary(
    page, shapes_site, asked, tmp_path, screenshot
) -> None:
    record, text = asked
    path = tmp_path / "quality.html"
    command = ["counterfactual", str(shapes_site.index), "--image", str(shapes_site.folder / record["file"])]
    command += ["--text", text, "-k", "2", "--quality", "--report", str(path), "--json", "--device", "cpu"]
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert run(command) == 0
    result = json.loads(buffer.getvalue())
    page.get(path.as_uri())
    tables = css(page, ".answer table.qcard")
    assert len(tables) == len(result["items"]) > 0
    first = [c.text for c in tables[0].find_elements(By.CSS_SELECTOR, "td.num")][::2]
    assert first == [_shown(result["quality"]["answers"][0][q]["value"]) for q in QUALITIES]
    assert page.find_element(By.XPATH, "//h2[text()='Quality of the answers']")
    notes = [n.text for n in css(page, ".answer .cc-faith") if n.text.startswith("quality:")]
    assert len(notes) == 2 * len(result["items"])  # each answer's two maps carry their card in one line
    screenshot("32-quality-report")
