"""`counterclip demo` runs end to end on a tiny set with the bundled model."""

from __future__ import annotations

import re

from counterclip.cli import run


def test_demo_end_to_end(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    assert run(["demo", "--out", str(out), "--n", "60", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    for name in ("report-image-side.html", "report-text-side.html"):
        html = (out / name).read_text()
        assert html.startswith("<!doctype html>") and "An answer counts when it scores" in html
        assert not re.search(r'src="(?!data:)', html)  # self-contained
        assert re.search(r'<span class="verdict (verified|weak|unverifiable)"', html)  # verdict badges
        assert 'class="cc-legend"' in html  # every map comes with its colour bar
    assert (out / "index" / "manifest.json").is_file()
    assert "reports:" in printed and "verdicts by the " in printed
    # a second run reuses the folder and updates the index in place
    assert run(["demo", "--out", str(out), "--n", "60", "--device", "cpu"]) == 0
