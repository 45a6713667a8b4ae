"""Regenerate the README's screenshots from the browser tests.

The browser tests (tests/browser, system Chromium) write what a person sees to ``test-output/browser``;
this script runs the ones the README shows into a scratch folder and copies the chosen pictures into
``docs/screenshots`` (a phone's shot cut to step 2, every picture reduced to 256 colours so the folder
stays small). Run it after a change to the page or the reports, and commit the pictures with it:

    python scripts/readme_screenshots.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "docs" / "screenshots"
#: test output name -> (README picture name, the box kept: left, top, right, bottom; a box larger than the
#: picture keeps what there is)
CHOSEN = {
    "30-answers-desktop.png": ("web-answers-desktop.png", (0, 0, 1400, 1300)),
    "30-answers-phone.png": ("web-answers-phone.png", (0, 0, 1400, 2400)),
    "32-stale-answers-phone.png": ("web-stale-phone.png", (0, 0, 1400, 2400)),
    "34-maps-phone.png": ("web-maps-phone.png", (0, 0, 1400, 2400)),
    "35-settled-desktop.png": ("web-settled-desktop.png", (0, 0, 1400, 1300)),
    "20-report-image-side.png": ("report-image-side.png", (0, 0, 1400, 2400)),
    # the quality cards: beside each answer (step 2 of the page), under each map (the dialog), the report
    "30-quality-answers.png": ("web-quality-answers.png", (650, 790, 1400, 1490)),
    "31-quality-maps.png": ("web-quality-maps.png", (140, 200, 1245, 1690)),
    "32-quality-report.png": ("report-quality.png", (0, 1050, 1400, 2400)),
}
TESTS = [
    "tests/browser/test_browser_people.py::test_answers_fit_the_screen_with_every_number_named",
    "tests/browser/test_browser_people.py::test_answers_are_marked_stale_when_the_question_changes",
    "tests/browser/test_browser_people.py::test_the_maps_dialog_closes_by_touch_or_click",
    "tests/browser/test_browser_people.py::test_the_original_reading_comes_first",
    "tests/browser/test_browser_outputs.py::test_image_side_report",
    "tests/browser/test_browser_quality.py",
]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="counterclip-shots-") as scratch:
        env = {**os.environ, "COUNTERCLIP_TEST_OUTPUT": scratch, "PYTHONPATH": str(REPO)}
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", *TESTS], cwd=REPO, env=env)
        if done.returncode != 0:
            print("the browser tests failed: no screenshot copied", file=sys.stderr)
            return done.returncode
        TARGET.mkdir(parents=True, exist_ok=True)
        for source, (name, (left, top, right, bottom)) in CHOSEN.items():
            with Image.open(Path(scratch) / "browser" / source) as shot:  # a long page: the part shown
                box = (left, top, min(shot.width, right), min(shot.height, bottom))
                kept = shot.convert("RGB").crop(box)
                kept.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(TARGET / name, optimize=True)
            print(f"{TARGET / name}: {(TARGET / name).stat().st_size // 1024} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
