"""Self-contained HTML report of a counterfactual query (thumbnails embedded as data URIs)."""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from counterclip.report.files import png_data_uri, write_text_atomic

THUMB = 160  # thumbnail side in pixels

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:1.4em} h2{font-size:1.1em;margin-top:28px}
.rule{background:#f4f4f4;padding:8px 12px;border-radius:6px;font-size:.9em}
.grid{display:flex;flex-wrap:wrap;gap:14px}
.card{border:1px solid #ddd;border-radius:8px;padding:8px;width:180px;font-size:.82em}
.card img{width:160px;height:160px;object-fit:contain;background:#fafafa;display:block}
.card .maps img{width:78px;height:78px;display:inline-block}
.ok{color:#0a7a2f;font-weight:600} .bad{color:#b00020;font-weight:600}
.caption{font-style:italic;min-height:2.4em}
table{border-collapse:collapse;font-size:.85em} td,th{padding:3px 8px;border-bottom:1px solid #eee;text-align:left}
"""


def image_data_uri(image: Image.Image, size: int = THUMB) -> str:
    """PNG thumbnail of ``image`` as a ``data:`` URI."""
    return png_data_uri(ImageOps.contain(image.convert("RGB"), (size, size)))


def _thumb_for(path: Path) -> str | None:
    try:
        with Image.open(path) as im:
            return image_data_uri(ImageOps.exif_transpose(im))
    except (OSError, ValueError):
        return None


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else html.escape(str(value))


def _card(item: Mapping[str, Any], root: Path, maps: Mapping[int, list[Image.Image]] | None) -> str:
    parts = ['<div class="card">']
    if item.get("kind") == "image" and item.get("path"):
        uri = _thumb_for(root / item["path"])
        parts.append(
            f'<img src="{uri}" alt="{html.escape(item["path"])}">' if uri else "<div>(file missing)</div>"
        )
        parts.append(f"<div>{html.escape(item['path'])}</div>")
    else:
        parts.append(f'<div class="caption">&ldquo;{html.escape(item.get("text") or "")}&rdquo;</div>')
    verified = (
        '<span class="ok">verified</span>'
        if item.get("verified")
        else '<span class="bad">not verified</span>'
    )
    parts.append(
        f"<div>#{item.get('rank')} {verified}<br>score {_fmt(item.get('score_before'))} &rarr; "
        f"<b>{_fmt(item.get('score_after'))}</b> (&Delta; {_fmt(item.get('delta'))})<br>"
        f"distance {_fmt(item.get('distance'))}"
        + (f", path step {item['step']}" if item.get("step") is not None else "")
        + "</div>"
    )
    if maps and item.get("id") in maps:
        parts.append('<div class="maps">' + "".join(_map_img(m) for m in maps[item["id"]]) + "</div>")
    parts.append("</div>")
    return "".join(parts)


def _map_img(image: Image.Image) -> str:
    """A small map image; wide ones (token strips) keep their aspect ratio."""
    if image.width > 2 * image.height:
        return f'<img style="width:160px;height:auto" src="{image_data_uri(image, 320)}">'
    return f'<img src="{image_data_uri(image, 78)}">'


def counterfactual_report(
    result: Mapping[str, Any],
    root: str | Path,
    query_image: Image.Image | None = None,
    maps: Mapping[int, list[Image.Image]] | None = None,
    query_maps: list[Image.Image] | None = None,
    title: str = "counterclip counterfactuals",
) -> str:
    """Render one counterfactual result (its ``to_dict()``) as a self-contained HTML page.

    Args:
        result: ``CounterfactualResult.to_dict()``.
        root: the index's image folder (item paths are relative to it).
        query_image: the query image, shown at the top.
        maps: optional explanation images per item id (e.g. its relevance overlay and a margin map).
        query_maps: optional explanation images for the query pair.
        title: page title.

    Returns:
        HTML text.
    """
    root = Path(root)
    query = result.get("query", {})
    validity = result.get("validity", {})
    body = [f"<h1>{html.escape(title)}</h1>"]
    head = []
    if query_image is not None:
        head.append(f'<div class="card"><img src="{image_data_uri(query_image)}"><div>query image</div>')
        if query_maps:
            head.append('<div class="maps">' + "".join(_map_img(m) for m in query_maps) + "</div>")
        head.append("</div>")
    described = {
        "side": result.get("side"),
        "mode": result.get("mode"),
        "text": result.get("text"),
        "labels": ", ".join(query.get("labels", [])) or None,
        "target": query.get("target"),
        "predicted": query.get("predicted"),
        "candidates re-scored": result.get("candidates"),
    }
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in described.items() if v is not None
    )
    head.append(f"<table>{rows}</table>")
    body.append('<div class="grid">' + "".join(head) + "</div>")
    body.append(f'<p class="rule"><b>valid when</b> {html.escape(str(validity.get("rule", "")))}</p>')
    items = result.get("items", [])
    body.append(f"<h2>Counterfactuals ({len(items)}), closest to the original first</h2>")
    body.append(
        '<div class="grid">' + "".join(_card(i, root, maps) for i in items) + "</div>"
        if items
        else "<p>No verified counterfactual in this index for this query.</p>"
    )
    for name, baseline in result.get("baselines", {}).items():
        body.append(f"<h2>Baseline: {html.escape(name.replace('_', ' '))}</h2>")
        body.append(
            '<div class="grid">' + "".join(_card(i, root, None) for i in baseline) + "</div>"
            if baseline
            else "<p>none valid</p>"
        )
    if result.get("stale"):
        rows = "".join(
            f"<tr><td>{_fmt(s.get('path') or s.get('text'))}</td><td>{_fmt(s.get('reason'))}</td></tr>"
            for s in result["stale"]
        )
        body.append(
            f"<h2>Stale index entries (not returned)</h2><table>{rows}</table><p>Run <code>counterclip update</code>.</p>"
        )
    timings = result.get("timings", {})
    body.append(
        "<h2>Timings</h2><table>"
        + "".join(f"<tr><th>{html.escape(k)}</th><td>{v * 1000:.1f} ms</td></tr>" for k, v in timings.items())
        + "</table>"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>"
    )


# write_text_atomic lives in counterclip.report.files; it stays importable from here for older callers.
__all__ = ["counterfactual_report", "image_data_uri", "write_text_atomic"]
