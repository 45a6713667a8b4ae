"""Helpers for browser tests (the fixtures are in conftest.py): where Chromium is, why it cannot run,
the server handle, console errors and waiting.

    from browser_kit import console_errors, wait_for
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
OUTPUT = Path(os.environ.get("COUNTERCLIP_TEST_OUTPUT", REPO / "test-output")) / "browser"
CHROMIUM = os.environ.get("COUNTERCLIP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = (
    os.environ.get("COUNTERCLIP_CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
)
INSTALL_HINT = (
    "browser tests skipped: install Chromium and its driver with `make install-browser` "
    "(as root: apt-get install -y chromium chromium-driver) and Selenium with `pip install 'counterclip[browser]'`"
)
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)
N_IMAGES = 120  # a few seconds to index; enough for every mode to find answers
#: Chrome's mobile emulation of a phone (an iPhone 12-14 sized screen).
PHONE = {
    "deviceMetrics": {"width": 390, "height": 844, "pixelRatio": 2.0, "touch": True, "mobile": True},
    "userAgent": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0 Mobile Safari/537.36",
}


def browser_missing() -> str | None:
    """Why the browser tests cannot run here (None when they can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return INSTALL_HINT + " (selenium is not installed)"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return INSTALL_HINT + f" ({path} not found)"
    return None


@dataclass
class Site:
    folder: Path  # the shapes images (with labels.jsonl)
    index: Path


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen
    log: Path

    def api(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """GET (no body) or POST JSON to the server; the parsed answer."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, headers={"content-type": "application/json"} if data else {}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def console_errors(driver: Any) -> list[dict[str, Any]]:
    """Console entries of level SEVERE since the last call (errors, failed loads, CSP violations)."""
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def wait_for(driver: Any, condition: Callable[[Any], Any], timeout: float = 60, what: str = "") -> Any:
    """Poll ``condition(driver)`` until it is truthy; its value."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, message=what)


class ThreadedServer:
    """An in-process uvicorn server for ``app`` on a free loopback port (``with`` starts and stops it);
    for pages that need server settings the session server does not have (a token, say)."""

    def __init__(self, app: Any) -> None:
        import threading

        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadedServer:
        import time

        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the in-process server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def horizontal_overflow(driver: Any) -> int:
    """How many CSS pixels the page is wider than its viewport (0: no sideways scrolling)."""
    return int(
        driver.execute_script(
            "const e = document.documentElement; return Math.max(e.scrollWidth, document.body.scrollWidth)"
            " - e.clientWidth"
        )
    )


def full_page_png(driver: Any, path: Path, width: int, mobile: bool, crop: str | None = None) -> Path:
    """A screenshot of the whole page at ``width`` CSS pixels (the viewport stretched to the page's
    height for the shot, then given back); ``crop``: only the element of that CSS selector."""
    import time

    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script(
        "return Math.max(document.documentElement.scrollHeight, window.innerHeight)"
    )
    metrics = {"width": width, "height": min(int(height), 12000), "deviceScaleFactor": 1, "mobile": mobile}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.3)
    box = None
    if crop is not None:
        box = driver.execute_script(
            "const r = document.querySelector(arguments[0]).getBoundingClientRect();"
            "return [r.left + scrollX, r.top + scrollY, r.right + scrollX, r.bottom + scrollY]",
            crop,
        )
    driver.save_screenshot(str(path))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    if box is not None:
        with Image.open(path) as shot:
            left, top, right, bottom = (int(v) for v in box)
            shot.crop(
                (max(left - 8, 0), max(top - 8, 0), min(right + 8, shot.width), min(bottom + 8, shot.height))
            ).save(path)
    return path
