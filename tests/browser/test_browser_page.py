"""The web app in a real headless Chromium against `counterclip serve`: what a person does, checked against
what the JSON API answers for the same query (the oracle)."""

from __future__ import annotations

import json
import time
import urllib.parse

import pytest
from browser_kit import console_errors, wait_for

pytest.importorskip("selenium")
from selenium.webdriver.common.by import By  # noqa: E402

VERDICTS = {"verified", "weak", "unverifiable", "unverified"}


def css(driver, selector: str):
    return driver.find_elements(By.CSS_SELECTOR, selector)


def open_page(driver, server, query: str = "") -> None:
    driver.get(server.url + "/" + query)
    wait_for(driver, lambda d: "images" in d.find_element(By.ID, "index-info").text, 30, "index info")


def card_ids(driver) -> list[int]:
    return [int(c.get_attribute("data-id")) for c in css(driver, "#search-results .card")]


def answer_ids(driver) -> list[int]:
    return [int(a.get_attribute("data-id")) for a in css(driver, "#cf-results > .answers > .answer")]


def wait_answers(driver, timeout: float = 120) -> None:
    wait_for(driver, lambda d: css(d, "#cf-results .goal"), timeout, "counterfactual results")


def images_loaded(driver, selector: str) -> bool:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).every(i => i.complete && i.naturalWidth > 0)",
        selector,
    )


def choose(driver, name: str, value: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f'input[name="{name}"][value="{value}"]').click()


def test_page_loads_with_no_console_errors(page, live_server, screenshot) -> None:
    open_page(page, live_server)
    info = live_server.api("/info")
    assert page.find_element(By.ID, "index-info").text == (
        f"index {info['name']}: {info['images']} images, {info['captions']} captions · model {info['model']}"
    )
    assert page.find_element(By.ID, "original").text.startswith("No original yet")
    # everything the page loaded came from the server itself (no CDN)
    resources = page.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(r.startswith(live_server.url) for r in resources), resources
    screenshot("01-page-empty")
    assert console_errors(page) == []


def test_text_search_shows_thumbnails(page, live_server, screenshot) -> None:
    open_page(page, live_server)
    page.find_element(By.ID, "search-text").send_keys("a red circle")
    page.find_element(By.CSS_SELECTOR, "#search-form button[type=submit]").click()
    wait_for(page, lambda d: css(d, "#search-results .card"), 60, "thumbnails")
    expected = live_server.api("/search", {"text": "a red circle", "k": 24, "collection": "images"})
    assert card_ids(page) == [i["id"] for i in expected["items"]]
    wait_for(page, lambda d: images_loaded(d, "#search-results img"), 30, "thumbnails loaded")
    first = css(page, "#search-results .card")[0]
    described = expected["images"][str(expected["items"][0]["id"])]
    assert first.find_element(By.CLASS_NAME, "name").text == described["name"]
    assert first.find_element(By.CLASS_NAME, "caption").text == f"\u201c{described['captions'][0]}\u201d"
    assert (
        first.find_element(By.CLASS_NAME, "score").text == f"score {expected['items'][0]['score_after']:.2f}"
    )
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(page.current_url).query) == {"q": ["a red circle"]}
    screenshot("02-text-search")
    assert console_errors(page) == []


def test_upload_search(page, live_server, shapes_site, tmp_path, screenshot) -> None:
    from PIL import Image

    open_page(page, live_server)
    # a file that is not in the index (a shapes image at another size)
    source = shapes_site.folder / "000007.png"
    upload = tmp_path / "my photo.png"
    Image.open(source).resize((160, 160)).save(upload)
    page.find_element(By.ID, "upload").send_keys(str(upload))
    wait_for(page, lambda d: css(d, "#search-results .card"), 60, "upload results")
    import base64

    body = {
        "image": {"base64": base64.b64encode(upload.read_bytes()).decode()},
        "k": 24,
        "collection": "images",
    }
    expected = live_server.api("/search", body)
    assert card_ids(page) == [i["id"] for i in expected["items"]]
    assert "my photo.png" in page.find_element(By.ID, "original").text
    assert (
        page.find_element(By.CSS_SELECTOR, "#original img").get_attribute("src").startswith("data:image/png")
    )
    screenshot("03-upload-search")
    assert console_errors(page) == []


def test_image_side_counterfactual_shows_verdicts(page, live_server, screenshot) -> None:
    open_page(page, live_server, "?q=a+red+circle")
    wait_for(page, lambda d: css(d, "#search-results .card"), 60, "thumbnails")
    picked = card_ids(page)[3]
    css(page, "#search-results .card")[3].find_element(By.CSS_SELECTOR, "button.thumb").click()
    wait_for(page, lambda d: f"index id {picked}" in d.find_element(By.ID, "original").text, 10, "original")
    text = page.find_element(By.ID, "cf-text")
    text.clear()
    text.send_keys("a blue square")
    page.find_element(By.ID, "cf-go").click()
    wait_answers(page)
    expected = live_server.api(
        "/counterfactual",
        {"image": {"id": picked}, "text": "a blue square", "side": "image", "mode": "increase", "k": 5},
    )
    assert expected["items"], "the shapes index should hold answers for this query"
    assert answer_ids(page) == [i["id"] for i in expected["items"]]
    answers = css(page, "#cf-results > .answers > .answer")
    for shown, item in zip(answers, expected["items"], strict=True):
        assert shown.find_element(By.CLASS_NAME, "verdict").text in VERDICTS
        assert shown.get_attribute("data-verdict") == item.get(
            "verdict", "verified" if item["verified"] else "unverified"
        )
        numbers = shown.find_element(By.CLASS_NAME, "numbers").text
        assert f"{item['score_before']:.2f} → {item['score_after']:.2f}" in numbers
        # the original beside each answer
        originals = shown.find_elements(By.CSS_SELECTOR, "figure.was img")
        assert originals and originals[0].get_attribute("src").endswith(f"/images/{picked}")
    rule = page.find_element(By.CLASS_NAME, "rule")
    assert rule.text == expected["rule_in_words"]  # the report's plain wording, with its numbers
    assert rule.get_attribute("title") == expected["validity"]["rule"]
    assert f"at least {expected['validity']['threshold']:.2f}" in rule.text
    wait_for(page, lambda d: images_loaded(d, "#cf-results img"), 30, "answer images")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(page.current_url).query)
    assert query["image"] == [str(picked)] and query["text"] == ["a blue square"]
    screenshot("04-image-side-increase")
    assert console_errors(page) == []


def test_text_side_counterfactual_shows_verdicts(page, live_server, shapes_site, screenshot) -> None:
    record = json.loads((shapes_site.folder / "labels.jsonl").read_text().splitlines()[4])
    image_id = live_server.api("/search", {"text": record["caption"], "k": 50})["items"]
    image_id = next(i["id"] for i in image_id if i["path"] == record["file"])
    open_page(page, live_server, f"?image={image_id}")
    wait_for(page, lambda d: f"index id {image_id}" in d.find_element(By.ID, "original").text, 30, "original")
    text = page.find_element(By.ID, "cf-text")
    text.clear()
    text.send_keys(f"a {record['colour']} {record['shape']}")
    choose(page, "side", "text")
    choose(page, "mode", "decrease")
    page.find_element(By.ID, "cf-go").click()
    wait_answers(page)
    body = {
        "image": {"id": image_id},
        "text": f"a {record['colour']} {record['shape']}",
        "side": "text",
        "mode": "decrease",
        "k": 5,
    }
    expected = live_server.api("/counterfactual", body)
    assert expected["items"]
    assert answer_ids(page) == [i["id"] for i in expected["items"]]
    answers = css(page, "#cf-results > .answers > .answer")
    for shown, item in zip(answers, expected["items"], strict=True):
        assert shown.find_element(By.CSS_SELECTOR, ".texts .now").text == f"\u201c{item['text']}\u201d"
        assert shown.find_element(By.CLASS_NAME, "verdict").text in VERDICTS
    screenshot("05-text-side-decrease")
    assert console_errors(page) == []


def test_flip_from_a_deep_link(page, live_server, screenshot) -> None:
    first = live_server.api("/search", {"text": "a green triangle", "k": 1})["items"][0]["id"]
    labels = "a green triangle,a red circle,a blue square"
    link = "?" + urllib.parse.urlencode(
        {"image": first, "mode": "flip", "labels": labels, "target": "a red circle"}
    )
    open_page(page, live_server, link)
    wait_answers(page)
    body = {
        "image": {"id": first},
        "mode": "flip",
        "side": "image",
        "labels": labels.split(","),
        "target": "a red circle",
        "k": 5,
    }
    expected = live_server.api("/counterfactual", body)
    assert answer_ids(page) == [i["id"] for i in expected["items"]]
    assert page.find_element(By.ID, "cf-target").get_attribute("value") == "a red circle"
    assert not page.find_element(By.ID, "flip-fields").get_attribute("hidden")
    for shown in css(page, "#cf-results > .answers > .answer"):
        assert "probability of" in shown.find_element(By.CLASS_NAME, "numbers").text
    screenshot("06-flip")
    assert console_errors(page) == []


def test_deep_link_reproduces_a_query(page, live_server) -> None:
    hit = live_server.api("/search", {"text": "a small yellow star", "k": 1})["items"][0]["id"]
    open_page(page, live_server, f"?image={hit}&text=a+yellow+star&mode=decrease&k=3")
    wait_answers(page)
    shown = answer_ids(page)
    body = {"image": {"id": hit}, "text": "a yellow star", "side": "image", "mode": "decrease", "k": 3}
    assert shown == [i["id"] for i in live_server.api("/counterfactual", body)["items"]]
    assert page.find_element(By.ID, "cf-text").get_attribute("value") == "a yellow star"
    assert page.find_element(By.CSS_SELECTOR, 'input[name="mode"][value="decrease"]').is_selected()
    # the address the page keeps is itself a deep link to the same answers
    again = page.current_url
    page.get("about:blank")
    page.get(again)
    wait_answers(page)
    assert answer_ids(page) == shown
    assert console_errors(page) == []


def test_a_map_opens(page, live_server, screenshot) -> None:
    hit = live_server.api("/search", {"text": "a large purple cross", "k": 1})["items"][0]["id"]
    open_page(page, live_server, f"?image={hit}&text=a+purple+circle")
    wait_answers(page)
    answer = css(page, "#cf-results > .answers > .answer")[0]
    answer.find_element(By.CSS_SELECTOR, "button.maps").click()
    dialog = page.find_element(By.ID, "maps-dialog")
    wait_for(page, lambda d: len(css(d, "#maps-body figure.map")) >= 4, 120, "maps")
    assert dialog.get_attribute("open") is not None
    titles = [f.find_element(By.TAG_NAME, "h4").text for f in css(page, "#maps-body figure.map")]
    assert titles == ["The original", "The answer", "Why it matches", "Why it rather than the original"]
    assert images_loaded(page, "#maps-body img.shown")
    # at full size (the shapes images are 128 px, shown at 2x), each heat map with its colour legend
    widths = page.execute_script(
        "return Array.from(document.querySelectorAll('#maps-body img.shown')).map(i => [i.naturalWidth, i.width])"
    )
    assert all(natural == 128 and shown == 256 for natural, shown in widths), widths
    assert len(css(page, "#maps-body .legend")) == 2
    screenshot("07-maps")
    page.find_element(By.ID, "maps-close").click()
    assert dialog.get_attribute("open") is None
    assert console_errors(page) == []


def test_the_report_link_downloads(page, live_server, downloads) -> None:
    hit = live_server.api("/search", {"text": "a small green square", "k": 1})["items"][0]["id"]
    open_page(page, live_server, f"?image={hit}&text=a+green+circle&k=2")
    wait_answers(page)
    paths = [
        i.find_element(By.CSS_SELECTOR, "figure.now figcaption").text
        for i in css(page, "#cf-results > .answers > .answer")
    ]
    page.find_element(By.ID, "report").click()
    target = downloads / "counterclip-image-increase.html"
    wait_for(page, lambda d: target.exists() and target.stat().st_size > 0, 180, "the report download")
    time.sleep(0.2)
    html = target.read_text(encoding="utf-8")
    assert html.lower().startswith("<!doctype html>")
    assert all(p in html for p in paths) and "data:image/png;base64," in html
    wait_for(page, lambda d: "Report saved" in d.find_element(By.ID, "cf-status").text, 10, "status")
    assert console_errors(page) == []


def test_errors_are_messages(page, live_server, screenshot) -> None:
    open_page(page, live_server, "?image=987654&text=a+red+circle")
    message = wait_for(
        page,
        lambda d: d.find_element(By.ID, "message").is_displayed() and d.find_element(By.ID, "message"),
        30,
        "message",
    )
    assert "no such image" in message.text
    page.find_element(By.ID, "cf-go").click()  # no original picked
    assert "Pick an original first" in page.find_element(By.ID, "cf-status").text
    screenshot("08-error")
    page.find_element(By.ID, "message-close").click()
    assert not page.find_element(By.ID, "message").is_displayed()
    # the 404 of the unknown id is the page's only console error (the browser logs failed requests)
    assert all("987654" in e["message"] for e in console_errors(page))


def test_docs_render_offline(page, live_server, screenshot) -> None:
    page.get(live_server.url + "/docs")
    wait_for(page, lambda d: "/counterfactual" in d.find_element(By.TAG_NAME, "body").text, 30, "swagger ui")
    resources = page.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(r.startswith(live_server.url) for r in resources), resources
    screenshot("09-docs")


def test_a_token_server_asks_for_the_token_once(page, shapes_site, screenshot) -> None:
    from browser_kit import ThreadedServer

    from counterclip.engine import Engine
    from counterclip.server.app import create_app
    from counterclip.server.settings import ServerSettings

    token = "browser-test-token-123"
    with Engine.open(shapes_site.index, device="cpu") as engine:
        with ThreadedServer(create_app(engine, ServerSettings(token=token, workers=1))) as server:
            page.get(server.url + "/?q=a+red+circle")
            form = wait_for(
                page,
                lambda d: (
                    d.find_element(By.ID, "token-form").is_displayed() and d.find_element(By.ID, "token-form")
                ),
                30,
                "token form",
            )
            assert "token" in page.find_element(By.ID, "message-text").text
            screenshot("10-token-asked")
            form.find_element(By.ID, "token-input").send_keys(token)
            form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            wait_for(page, lambda d: css(d, "#search-results .card"), 60, "search after sign-in")
            assert not page.find_element(By.ID, "token-form").is_displayed()
            # thumbnails are plain <img> requests: they load with the same-site cookie the page obtained
            wait_for(
                page, lambda d: images_loaded(d, "#search-results img"), 30, "thumbnails with the cookie"
            )
            errors = console_errors(page)
            assert errors and all("401" in e["message"] for e in errors)  # only the first, refused calls
