"""The counterfactual HTML report is one self-contained file that shows what the result holds."""

from __future__ import annotations

import base64
import io
import re

from PIL import Image

from counterclip.report.html import counterfactual_report, write_text_atomic


def _result() -> dict:
    item = {
        "id": 3,
        "kind": "image",
        "path": "a.png",
        "text": None,
        "score_before": 1.0,
        "score_after": 4.5,
        "delta": 3.5,
        "distance": 0.12,
        "rank": 1,
        "verified": True,
        "step": 2,
        "probabilities": None,
    }
    caption = dict(item, id=9, kind="caption", path=None, text="a <red> circle", verified=False, step=None)
    return {
        "side": "image",
        "mode": "increase",
        "text": "a red circle",
        "query": {"image": {"path": "q.png"}},
        "validity": {"rule": "score >= 4.000"},
        "items": [item],
        "baselines": {"nearest_unlike_neighbour": [caption]},
        "stale": [{"id": 5, "path": "old.png", "text": None, "reason": "changed since indexing"}],
        "candidates": 17,
        "path_values": [1.0, 2.0],
        "timings": {"total": 0.0123},
    }


def test_report_is_self_contained(tmp_path) -> None:
    Image.new("RGB", (40, 20), (200, 10, 10)).save(tmp_path / "a.png")
    html = counterfactual_report(_result(), tmp_path, query_image=Image.new("RGB", (30, 30), (0, 0, 255)))
    # no external resources: every src is a data URI, and the embedded thumbnails decode as PNGs
    sources = re.findall(r'src="([^"]+)"', html)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    thumb = Image.open(io.BytesIO(base64.b64decode(sources[1].split(",", 1)[1])))
    assert thumb.size == (160, 80) and thumb.getpixel((80, 40)) == (200, 10, 10)  # aspect kept, colour intact
    assert "score &gt;= 4.000" in html and "12.3 ms" in html
    assert "a &lt;red&gt; circle" in html and "<red>" not in html  # user text is escaped
    assert "old.png" in html and "changed since indexing" in html
    assert "&Delta; 3.500" in html and "path step 2" in html


def test_write_text_atomic(tmp_path) -> None:
    target = write_text_atomic(tmp_path / "sub" / "r.html", "hello")
    assert target.read_text() == "hello"
    assert [p.name for p in target.parent.iterdir()] == ["r.html"]  # no temp file left behind
