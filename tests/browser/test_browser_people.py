"""The web app as people use it, on a laptop (1366 x 900) and on a phone (Chrome's mobile emulation,
390 x 844): no sideways scrolling from 360 px up, answers that belong to their question (marked stale
when it changes), an upload that never becomes the original unless it was read, a maps dialog closed by
touch or click, a skip link to step 2, every number named (score by its kind of pair, p(match)), ids
beside file names, the original's own reading first, flip's chosen target said. The JSON API is the
oracle; the screenshots (30-... to 39-..., ``-desktop`` / ``-phone``) are for people to look at.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

import pytest
from browser_kit import OUTPUT, console_errors, full_page_png, horizontal_overflow, wait_for

pytest.importorskip("selenium")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402


@dataclass
class Device:
    name: str  # desktop | phone
    driver: Any
    width: int
    mobile: bool

    def shot(self, name: str, crop: str | None = None) -> None:
        """The whole page (``crop``: on the phone, only that element: the search above is long)."""
        part = crop if self.mobile else None
        full_page_png(self.driver, OUTPUT / f"{name}-{self.name}.png", self.width, self.mobile, part)


@pytest.fixture(params=["desktop", "phone"])
def device(request, page, phone_page) -> Device:
    if request.param == "desktop":
        page.set_window_size(1366, 900)
        return Device("desktop", page, 1366, False)
    return Device("phone", phone_page, 390, True)


def css(driver, selector: str):
    return driver.find_elements(By.CSS_SELECTOR, selector)


def open_page(driver, server, query: str = "") -> None:
    driver.get(server.url + "/" + query)
    wait_for(driver, lambda d: "images" in d.find_element(By.ID, "index-info").text, 30, "index info")


def wait_answers(driver, timeout: float = 120) -> None:
    wait_for(driver, lambda d: css(d, "#cf-results .goal"), timeout, "counterfactual results")


def answer_ids(driver) -> list[int]:
    return [int(a.get_attribute("data-id")) for a in css(driver, "#cf-results > .answers > .answer")]


def in_view(driver, element) -> bool:
    """The element lies wholly inside the visible viewport."""
    return driver.execute_script(
        "const r = arguments[0].getBoundingClientRect();"
        "return r.width > 0 && r.top >= 0 && r.left >= 0 && r.bottom <= innerHeight && r.right <= innerWidth",
        element,
    )


def tap(driver, element) -> None:
    """Scroll an element into view and click (a tap under touch emulation)."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def first_hit(server, text: str) -> int:
    return server.api("/search", {"text": text, "k": 1})["items"][0]["id"]


def is_stale(driver) -> bool:
    return "stale" in driver.find_element(By.ID, "cf-results").get_attribute("class").split()


# --- layout -------------------------------------------------------------------------------------------------


def test_answers_fit_the_screen_with_every_number_named(device, live_server) -> None:
    driver = device.driver
    hit = first_hit(live_server, "a large red circle")
    open_page(driver, live_server, f"?q=a+red+circle&image={hit}&text=a+blue+square")
    wait_answers(driver)
    assert horizontal_overflow(driver) == 0
    search = driver.find_element(By.CSS_SELECTOR, "#search-form button[type=submit]")
    driver.execute_script("window.scrollTo(0, 0)")
    assert in_view(driver, search), "the Search button is on the screen"
    body = {"image": {"id": hit}, "text": "a blue square", "side": "image", "mode": "increase", "k": 5}
    expected = live_server.api("/counterfactual", body)
    assert answer_ids(driver) == [i["id"] for i in expected["items"]]
    for shown, item in zip(css(driver, "#cf-results > .answers > .answer"), expected["items"], strict=True):
        assert shown.find_element(By.CLASS_NAME, "pmatch").text == f"p(match) {item['p_match']:.2f}"
        assert f"index id {item['id']}" in shown.text and f"distance {item['distance']:.3f}" in shown.text
    # the heading states the real order; the legend says what each number is, with its range
    assert driver.find_element(By.CSS_SELECTOR, "#cf-results .heading").text.startswith(
        expected["reading"]["heading"]
    )
    legend = driver.find_element(By.CSS_SELECTOR, "#cf-results details.legend-box")
    tap(driver, legend.find_element(By.TAG_NAME, "summary"))
    assert (
        "image\u2013text score" in legend.text
        and "p(match)" in legend.text
        and "0 (same) to 2" in legend.text
    )
    done = driver.find_element(By.ID, "cf-status").text
    assert re.match(r"Done in \d+(\.\d)? (ms|s)", done) and "0.0 s" not in done, done
    device.shot("30-answers", "#cf-panel")
    assert console_errors(driver) == []


def test_no_sideways_scrolling_from_360_px_up(page, live_server) -> None:
    hit = first_hit(live_server, "a small green square")
    open_page(page, live_server, f"?q=a+green+square&image={hit}&text=a+green+circle")
    wait_answers(page)
    for width in (360, 390, 414, 600, 768, 900, 1024, 1366):
        metrics = {"width": width, "height": 800, "deviceScaleFactor": 1, "mobile": width < 600}
        page.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        assert horizontal_overflow(page) == 0, f"{width} px wide"
    page.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_caption_results_read_as_rows(device, live_server) -> None:
    driver = device.driver
    open_page(driver, live_server, "?q=a+red+circle&find=captions")
    wait_for(driver, lambda d: css(d, "#search-results .caption-row"), 60, "caption rows")
    expected = live_server.api("/search", {"text": "a red circle", "k": 24, "collection": "captions"})
    rows = css(driver, "#search-results .caption-row")
    assert [int(r.get_attribute("data-id")) for r in rows] == [i["id"] for i in expected["items"]]
    line = driver.execute_script(
        "return parseFloat(getComputedStyle(arguments[0]).lineHeight) || 20", rows[0]
    )
    for row in rows[:5]:
        text = row.find_element(By.CLASS_NAME, "text")
        assert text.size["width"] > 200 and text.size["height"] < 2.5 * line, text.size  # not a word per line
    legend = driver.find_element(By.ID, "search-legend")
    tap(driver, legend.find_element(By.TAG_NAME, "summary"))
    assert "text\u2013text score" in legend.text  # a text against captions: its own scale
    assert horizontal_overflow(driver) == 0
    device.shot("31-caption-search")


def test_search_cards_show_ids_and_p_match(device, live_server) -> None:
    driver = device.driver
    open_page(driver, live_server, "?q=a+red+circle")
    wait_for(driver, lambda d: css(d, "#search-results .card"), 60, "cards")
    expected = live_server.api("/search", {"text": "a red circle", "k": 24})
    first, item = css(driver, "#search-results .card")[0], expected["items"][0]
    assert first.find_element(By.CLASS_NAME, "id").text == f"#{item['id']}"
    assert first.find_element(By.CLASS_NAME, "pmatch").text == f"p(match) {item['p_match']:.2f}"
    name = expected["images"][str(item["id"])]["name"]
    tap(driver, first.find_element(By.CSS_SELECTOR, "button.similar"))
    wait_for(driver, lambda d: "images like" in d.find_element(By.ID, "search-status").text, 60, "similar")
    assert f"images like {name} (#{item['id']})" in driver.find_element(By.ID, "search-status").text
    legend = driver.find_element(By.ID, "search-legend")
    tap(driver, legend.find_element(By.TAG_NAME, "summary"))
    assert "image\u2013image score" in legend.text and "p(match)" not in legend.text
    assert console_errors(driver) == []


# --- one state model ------------------------------------------------------------------------------------------


def test_answers_are_marked_stale_when_the_question_changes(device, live_server) -> None:
    driver = device.driver
    hit = first_hit(live_server, "a small yellow star")
    open_page(driver, live_server, f"?image={hit}&text=a+yellow+star")
    wait_answers(driver)
    shown = answer_ids(driver)
    assert not is_stale(driver) and not driver.find_element(By.ID, "report").get_attribute("disabled")
    tap(driver, driver.find_element(By.CSS_SELECTOR, 'input[name="mode"][value="decrease"]'))
    assert is_stale(driver) and driver.find_element(By.ID, "cf-stale").is_displayed()
    note = driver.find_element(By.ID, "cf-stale-text").text
    assert "earlier question" in note and f"#{hit}" in note and "match the text more" in note
    assert driver.find_element(By.ID, "report").get_attribute("disabled") is not None
    assert "mode" not in urllib.parse.parse_qs(urllib.parse.urlsplit(driver.current_url).query)
    device.shot("32-stale-answers", "#cf-panel")
    tap(driver, driver.find_element(By.CSS_SELECTOR, 'input[name="mode"][value="increase"]'))
    assert not is_stale(driver) and not driver.find_element(By.ID, "cf-stale").is_displayed()
    # a new original: the answers are about another image now
    other = next(c for c in css(driver, "#search-results .card") if c.get_attribute("data-id") != str(hit))
    tap(driver, other.find_element(By.CSS_SELECTOR, "button.pick"))
    wait_for(driver, lambda d: is_stale(d), 10, "stale after a new original")
    # a form error: said in the status, the old answers stay marked as old
    text = driver.find_element(By.ID, "cf-text")
    text.clear()
    tap(driver, driver.find_element(By.ID, "cf-go"))
    assert "Type the text" in driver.find_element(By.ID, "cf-status").text and is_stale(driver)
    assert answer_ids(driver) == shown  # still the earlier answers, marked, not passed off as new
    # asking again makes fresh answers, current again
    text.send_keys("a yellow star")
    tap(driver, driver.find_element(By.ID, "cf-rerun"))
    wait_for(driver, lambda d: not is_stale(d), 120, "fresh answers")
    assert console_errors(driver) == []


def test_a_broken_upload_never_becomes_the_original(device, live_server, tmp_path) -> None:
    driver = device.driver
    hit = first_hit(live_server, "a large blue square")
    open_page(driver, live_server, f"?image={hit}&text=a+blue+square")
    wait_answers(driver)
    shown = answer_ids(driver)
    broken = tmp_path / "holiday.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"this is not really a picture" * 20)
    driver.find_element(By.ID, "upload").send_keys(str(broken))
    message = wait_for(
        driver,
        lambda d: d.find_element(By.ID, "message").is_displayed() and d.find_element(By.ID, "message"),
        30,
    )
    assert "the uploaded file is not a usable image" in message.text and "base64" not in message.text
    # the original is still the picked image, with its answers, current
    original = driver.find_element(By.ID, "original")
    assert f"index id {hit}" in original.text and "holiday.png" not in original.text
    assert original.find_element(By.TAG_NAME, "img").get_attribute("src").endswith(f"/images/{hit}")
    assert answer_ids(driver) == shown and not is_stale(driver)
    device.shot("33-broken-upload")


# --- the maps dialog and the keyboard ------------------------------------------------------------------------


def test_the_maps_dialog_closes_by_touch_or_click(device, live_server) -> None:
    driver = device.driver
    hit = first_hit(live_server, "a large purple cross")
    open_page(driver, live_server, f"?image={hit}&text=a+purple+circle")
    wait_answers(driver)
    tap(driver, css(driver, "#cf-results > .answers > .answer button.maps")[0])
    dialog = driver.find_element(By.ID, "maps-dialog")
    wait_for(driver, lambda d: len(css(d, "#maps-body figure.map")) >= 4, 120, "maps")
    close, title = driver.find_element(By.ID, "maps-close"), driver.find_element(By.ID, "maps-title")
    assert in_view(driver, close) and in_view(driver, title), "title and Close on the screen"
    assert title.text.startswith("Maps for ") and "(#" in title.text
    assert horizontal_overflow(driver) == 0
    driver.save_screenshot(str(OUTPUT / f"34-maps-{device.name}.png"))
    close.click()
    assert dialog.get_attribute("open") is None
    if device.name == "desktop":  # a click outside the box (on the dimmed page) closes it too
        tap(driver, css(driver, "#cf-results > .answers > .answer button.maps")[0])
        wait_for(driver, lambda d: d.find_element(By.ID, "maps-dialog").get_attribute("open") is not None, 10)
        box = dialog.rect
        ActionChains(driver).move_to_element_with_offset(dialog, -box["width"] // 2 - 20, 0).click().perform()
        assert dialog.get_attribute("open") is None
    assert console_errors(driver) == []


def test_the_skip_link_reaches_step_two(device, live_server) -> None:
    driver = device.driver
    open_page(driver, live_server, "?q=a+red+circle")
    wait_for(driver, lambda d: css(d, "#search-results .card"), 60, "cards")
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    skip = driver.switch_to.active_element
    assert skip.get_attribute("id") == "skip-link" and in_view(driver, skip), "the first Tab: the skip link"
    assert "Skip to step 2" in skip.text
    skip.send_keys(Keys.ENTER)
    assert driver.switch_to.active_element.get_attribute("id") == "cf-title"
    driver.switch_to.active_element.send_keys(Keys.TAB)
    assert driver.switch_to.active_element.get_attribute("id") in ("cf-text", "cf-labels")
    # the cards ask two stops each (Pick, Similar), not three
    stops = driver.execute_script(
        "return Array.from(document.querySelectorAll('#search-results .card button'))"
        ".filter(b => b.tabIndex >= 0).length"
    )
    assert stops == 2 * len(css(driver, "#search-results .card"))


# --- what an answer says (issue 27 on the page) -----------------------------------------------------------


def test_the_original_reading_comes_first(device, live_server) -> None:
    driver = device.driver
    link = {"image": 12, "text": "a red circle", "mode": "decrease"}  # the README's deep link
    open_page(driver, live_server, "?" + urllib.parse.urlencode(link))
    wait_answers(driver)
    body = {"image": {"id": 12}, "text": "a red circle", "side": "image", "mode": "decrease", "k": 5}
    expected = live_server.api("/counterfactual", body)
    assert expected["original"]["settled"], "image 12 does not match 'a red circle': nothing to take away"
    reading = driver.find_element(By.CSS_SELECTOR, "#cf-results .original-reading.settled")
    assert reading.text == expected["reading"]["original"] and reading.text.startswith("The original already")
    assert not css(driver, '#cf-results .answer[data-verdict="verified"]')  # no green badge
    for shown, item in zip(css(driver, "#cf-results > .answers > .answer"), expected["items"], strict=True):
        assert shown.find_element(By.CLASS_NAME, "reason").text == f"Not verified: {item['reason']}"
    # copies of the original are counted; the query's own entry is no news and not shown
    left_out = [p.text for p in css(driver, "#cf-results .left-out")]
    assert left_out == ([expected["reading"]["left_out"]] if expected["reading"]["left_out"] else [])
    assert all("the query itself" not in line for line in left_out)
    # the settled sentence is said once, first (not again among the warnings)
    warnings = " ".join(w.text for w in css(driver, "#cf-results .warnings li"))
    assert expected["original"]["settled"] not in warnings
    # a map of an answer that does not match says so in its title
    tap(driver, css(driver, "#cf-results > .answers > .answer button.maps")[0])
    wait_for(driver, lambda d: len(css(d, "#maps-body figure.map")) >= 4, 120, "maps")
    titles = [h.text for h in css(driver, "#maps-body figure.map h4")]
    assert titles[2] == "What in it counts toward the text (not a match)"
    driver.find_element(By.ID, "maps-close").click()
    device.shot("35-settled", "#cf-panel")
    assert console_errors(driver) == []


def test_flip_without_a_target_takes_the_runner_up(device, live_server) -> None:
    driver = device.driver
    hit = first_hit(live_server, "a large green triangle")
    labels = "a green triangle,a red circle,a blue square"
    open_page(
        driver, live_server, "?" + urllib.parse.urlencode({"image": hit, "mode": "flip", "labels": labels})
    )
    wait_answers(driver)
    body = {"image": {"id": hit}, "mode": "flip", "side": "image", "labels": labels.split(","), "k": 5}
    expected = live_server.api("/counterfactual", body)
    target = expected["query"]["target"]
    assert expected["query"]["target_chosen"] and target != expected["query"]["predicted"]
    assert driver.find_element(By.ID, "cf-target").get_attribute("value") == ""  # the runner-up option
    assert (
        driver.find_element(By.CSS_SELECTOR, "#cf-results .target-note").text
        == expected["reading"]["target_note"]
    )
    assert answer_ids(driver) == [i["id"] for i in expected["items"]]
    for shown in css(driver, "#cf-results > .answers > .answer"):
        assert shown.find_element(By.CLASS_NAME, "numbers").text.startswith(
            f"class probability of \u201c{target}\u201d"
        )
        assert shown.find_element(By.CLASS_NAME, "pmatch").text.startswith(
            f"p(match) of \u201c{target}\u201d"
        )
    assert "target" not in urllib.parse.parse_qs(urllib.parse.urlsplit(driver.current_url).query)
    device.shot("36-flip-runner-up", "#cf-panel")
    assert console_errors(driver) == []


def test_baselines_say_what_they_are_and_name_repeats(device, live_server) -> None:
    driver = device.driver
    hit = first_hit(live_server, "a small green square")
    open_page(driver, live_server, f"?image={hit}&text=a+green+circle")
    wait_answers(driver)
    body = {"image": {"id": hit}, "text": "a green circle", "side": "image", "mode": "increase", "k": 5}
    expected = live_server.api("/counterfactual", body)
    details = driver.find_element(By.CSS_SELECTOR, "#cf-results details.baselines")
    tap(driver, details.find_element(By.TAG_NAME, "summary"))
    groups = details.find_elements(By.CLASS_NAME, "baseline-group")
    assert len(groups) == len(expected["baselines"])
    for group in groups:
        assert group.find_element(By.CSS_SELECTOR, "p.muted").text.strip()  # what this baseline is
    ranks = {i["id"]: i["rank"] for i in expected["items"]}
    repeated = [i for items in expected["baselines"].values() for i in items if i["id"] in ranks]
    for item in repeated:
        row = details.find_element(By.CSS_SELECTOR, f'.baseline-item[data-id="{item["id"]}"]')
        assert f"the same as answer #{ranks[item['id']]}" in row.text and not row.find_elements(
            By.TAG_NAME, "img"
        )
    assert horizontal_overflow(driver) == 0
    device.shot("37-baselines", "#cf-panel")
