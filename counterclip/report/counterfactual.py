"""A counterfactual report with its maps: which regions (and words) make each result move the score.

Plain inputs only: the result (a ``CounterfactualResult`` or its ``to_dict()``), the model, the index's
image folder and a function that loads an indexed image; the engine is never imported. The maps come
from `counterclip.explainers.image_counterfactual_maps` / `text_counterfactual_maps`, so the report shows
exactly what ``counterclip explain`` would, with the explainers' own preprocessing.

Examples::

    maps = counterfactual_maps(engine.model, result, engine.index.root, query_image, load_image)
    write_counterfactual_report("cf.html", result, engine.index.root, query_image, maps)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from counterclip.explainers import explain, image_counterfactual_maps, text_counterfactual_maps
from counterclip.models.base import ClipModel
from counterclip.report.files import write_text_atomic
from counterclip.report.html import counterfactual_report
from counterclip.report.images import overlay, token_strip

ImageLoader = Callable[[Path], "Image.Image | None"]


@dataclass
class CounterfactualMaps:
    """Map images for a report: per result item id, and for the query pair itself."""

    items: dict[int, list[Image.Image]] = field(default_factory=dict)
    query: list[Image.Image] = field(default_factory=list)


def open_image(path: Path) -> Image.Image | None:
    """The upright RGB image of a file, or None when it is missing or unreadable (the default loader)."""
    try:
        with Image.open(path) as im:
            return ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, ValueError):
        return None


def as_result_dict(result: Any) -> dict[str, Any]:
    """A result object (anything with ``to_dict()``) or its dict, as the dict."""
    return dict(result) if isinstance(result, Mapping) else result.to_dict()


def map_method(model: ClipModel, tower: str = "image") -> str:
    """The explainer the report uses for ``tower``'s maps: attention relevance where that tower has
    recomputable attention (a ViT image tower; a transformer text tower), Grad-CAM otherwise."""
    internals = model.image_tower() if tower == "image" else model.text_tower()
    return "relevance" if internals.blocks and internals.recompute is not None else "gradcam"


def counterfactual_maps(
    model: ClipModel,
    result: Any,
    root: str | Path,
    query_image: Image.Image | None = None,
    load_image: ImageLoader | None = None,
) -> CounterfactualMaps:
    """The map images of a counterfactual report.

    Args:
        model: the model the index was built with.
        result: a ``CounterfactualResult`` or its ``to_dict()``.
        root: the index's image folder (item paths are relative to it).
        query_image: the query image; without it only image-side pair maps are drawn.
        load_image: ``path -> PIL image or None`` for indexed files (e.g. the engine's decoder, so a map
            shows the image the index embedded). Default: `open_image`.

    Returns:
        `CounterfactualMaps`: the query pair's overlay; per image-side item its overlay for the text and
        "why this rather than the original" (`image_counterfactual_maps`); per caption its token strip and
        the query image's map of "why this caption rather than the original" (`text_counterfactual_maps`).
    """
    data = as_result_dict(result)
    load = load_image or open_image
    method, text_method = map_method(model), map_method(model, "text")
    text = data.get("text") or data.get("query", {}).get("target")  # flip mode: explain the target label
    maps = CounterfactualMaps()
    if not text:
        return maps
    if query_image is not None:
        maps.query.append(overlay(query_image, explain(model, query_image, text, method=method).pixel_map))
    for item in data.get("items", []):
        if data.get("side") == "image" and item.get("path"):
            image = load(Path(root) / item["path"])
            if image is None:
                continue
            if query_image is None:
                maps.items[item["id"]] = [
                    overlay(image, explain(model, image, text, method=method).pixel_map)
                ]
                continue
            pair, margin = image_counterfactual_maps(model, query_image, image, text, method=method)
            maps.items[item["id"]] = [overlay(image, pair.pixel_map), overlay(image, margin.pixel_map)]
        elif data.get("side") == "text" and item.get("text") and query_image is not None:
            pair, margin = text_counterfactual_maps(
                model, query_image, text, item["text"], method=text_method
            )
            images = [token_strip(pair.tokens, pair.token_map)] if pair.tokens is not None else []
            maps.items[item["id"]] = [*images, overlay(query_image, margin.pixel_map)]
    return maps


def write_counterfactual_report(
    path: str | Path,
    result: Any,
    root: str | Path,
    query_image: Image.Image | None = None,
    maps: CounterfactualMaps | None = None,
) -> Path:
    """Render a counterfactual result to one self-contained HTML file (atomically).

    Args:
        path: the HTML file to write.
        result: a ``CounterfactualResult`` or its ``to_dict()``.
        root: the index's image folder (thumbnails are read from it).
        query_image: shown at the top.
        maps: from `counterfactual_maps`; None for a report without maps.

    Returns:
        The path written.
    """
    maps = maps or CounterfactualMaps()
    page = counterfactual_report(
        as_result_dict(result), root, query_image=query_image, maps=maps.items, query_maps=maps.query
    )
    return write_text_atomic(path, page)
