"""Shared browser-test fixtures: a real `counterclip serve` over a small shapes index, a headless Chromium
driven by Selenium, and screenshots for people to look at.

- ``shapes_site`` (session): the image folder and index (bundled model, shapes vocabulary).
- ``live_server`` (session): ``python -m counterclip serve`` on a free loopback port; ``.url``, ``.api(...)``.
- ``browser`` (session): one Chromium (``--headless`` and the flags below, a fresh profile); skipped with
  the install command when Chromium, chromedriver or Selenium is missing.
- ``page`` (function): the browser with a clean slate (console log drained, download folder empty).
- ``screenshot`` (function): ``screenshot("name")`` writes ``test-output/browser/name.png`` (full page);
  ``COUNTERCLIP_TEST_OUTPUT`` moves the folder.
- ``phone`` (session): a second Chromium under Chrome's mobile emulation (390 x 844, touch, a phone's
  user agent); ``phone_page`` (function) gives it a clean slate like ``page``.

Other browser tests (report or explanation screenshots) reuse these fixtures as they are.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_kit import (
    CHROME_FLAGS,
    CHROMEDRIVER,
    CHROMIUM,
    N_IMAGES,
    OUTPUT,
    PHONE,
    REPO,
    LiveServer,
    Site,
    browser_missing,
    free_port,
)


@pytest.fixture(scope="session")
def shapes_site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    from counterclip.index_builder import build_index
    from counterclip.shapes import generate_folder
    from counterclip.shapes import vocabulary as shapes_vocabulary

    base = tmp_path_factory.mktemp("browser-site")
    generate_folder(base / "shapes", n=N_IMAGES, seed=11)
    vocab = base / "vocab.txt"
    vocab.write_text("\n".join(shapes_vocabulary()) + "\n", encoding="utf-8")
    build_index(
        base / "shapes",
        base / "shapes.idx",
        model="bundled:shapes",
        vocab=vocab,
        device="cpu",
        progress=False,
    )
    return Site(base / "shapes", base / "shapes.idx")


@pytest.fixture(scope="session")
def live_server(shapes_site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """`counterclip serve` itself (the CLI, in a subprocess) over the shapes index."""
    pytest.importorskip("uvicorn")
    port = free_port()
    log = tmp_path_factory.mktemp("server-log") / "serve.log"
    command = [sys.executable, "-m", "counterclip", "serve", str(shapes_site.index), "--port", str(port)]
    command += ["--device", "cpu", "--workers", "2"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    server = LiveServer(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 180
    while True:
        try:
            if server.api("/health")["status"] == "ok":
                break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"counterclip serve did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.25)
    yield server
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="session")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="session")
def browser(downloads: Path) -> Iterator[Any]:
    driver, profile = _chromium(downloads)
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _chromium(downloads: Path, mobile: dict[str, Any] | None = None) -> tuple[Any, str]:
    """A headless Chromium (optionally under mobile emulation) and its fresh profile folder."""
    missing = browser_missing()
    if missing and os.environ.get("COUNTERCLIP_REQUIRE_BROWSER") == "1":
        pytest.fail(missing.replace("browser tests skipped", "browser tests required (CI)"))
    if missing:
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="counterclip-chromium-")
    for flag in (*CHROME_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    if mobile is not None:
        options.add_experimental_option("mobileEmulation", mobile)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options), profile


@pytest.fixture(scope="session")
def phone(downloads: Path) -> Iterator[Any]:
    """Chromium as a phone: Chrome's mobile emulation at 390 x 844 CSS pixels, touch events on."""
    driver, profile = _chromium(downloads, PHONE)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture()
def phone_page(phone: Any) -> Any:
    """The phone browser on a blank page, its console log drained."""
    phone.get("about:blank")
    phone.get_log("browser")
    return phone


@pytest.fixture()
def page(browser: Any, downloads: Path) -> Any:
    """The shared browser, on a blank page, with its console log drained and the download folder empty."""
    browser.get("about:blank")
    browser.set_window_size(1400, 1000)
    browser.get_log("browser")
    for item in downloads.iterdir():
        item.unlink()
    return browser


@pytest.fixture()
def screenshot(page: Any, request: pytest.FixtureRequest) -> Callable[[str], Path]:
    """``screenshot("name")`` saves the whole page as ``test-output/browser/name.png``."""

    def take(name: str) -> Path:
        OUTPUT.mkdir(parents=True, exist_ok=True)
        size = page.get_window_size()
        height = page.execute_script(
            "return Math.max(document.documentElement.scrollHeight, window.innerHeight)"
        )
        page.set_window_size(size["width"], min(int(height) + 20, 6000))
        page.execute_script("window.scrollTo(0, 0)")
        time.sleep(0.2)
        path = OUTPUT / f"{name}.png"
        page.save_screenshot(str(path))
        page.set_window_size(size["width"], size["height"])
        return path

    return take
