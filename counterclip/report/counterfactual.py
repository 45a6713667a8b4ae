"""A counterfactual report with its maps: which regions (and words) make each result move the score.

Plain inputs only: the result (a ``CounterfactualResult`` or its ``to_dict()``), the model, the index's
image folder and a function that loads an indexed image; the engine is never imported. The maps come
from `counterclip.explainers.image_counterfactual_maps` / `text_counterfactual_maps`, so the report shows
exactly what ``counterclip explain`` would, with the explainers' own preprocessing; each map is a titled
`Tile` in the one visual language (`counterclip.explainers.figure`) and carries its faithfulness for that
image (deletion AUC beside random orders, `counterclip.explainers.metrics.map_faithfulness`).

Examples::

    maps = counterfactual_maps(engine.model, result, engine.index.root, query_image, load_image)
    write_counterfactual_report("cf.html", result, engine.index.root, query_image, maps)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from counterclip.explainers import (
    EmbeddingMargin,
    Margin,
    PixelCodec,
    explain,
    image_counterfactual_maps,
    text_counterfactual_maps,
)
from counterclip.explainers.figure import MapScale, Tile, TokenRow, overlay
from counterclip.explainers.metrics import map_faithfulness
from counterclip.explainers.quality import PairWith, map_quality
from counterclip.models.base import ClipModel
from counterclip.report.files import write_text_atomic
from counterclip.report.html import counterfactual_report
from counterclip.report.reading import pair_map_title
from counterclip.report.words import changed_words, token_positions
from counterclip.scores import PairScore

ImageLoader = Callable[[Path], "Image.Image | None"]
Progress = Callable[[int, int], None]  # (done, total) after each answer's maps


@dataclass
class CounterfactualMaps:
    """What a report draws beside the numbers: per result item id its map tiles (and word rows), the
    query pair's tiles, and in flip mode the original's probability per label."""

    items: dict[int, list[Tile | TokenRow]] = field(default_factory=dict)
    query: list[Tile] = field(default_factory=list)
    query_probabilities: dict[str, float] | None = None
    item_probabilities: dict[int, dict[str, float]] = field(default_factory=dict)  # flip: per answer


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


def map_tile(
    title: str,
    image: Image.Image,
    pixel_map: np.ndarray,
    faithfulness: Any = None,
    unit: str = "the score",
    card: Any = None,
) -> Tile:
    """A titled overlay of ``pixel_map`` on ``image`` with its colour scale, faithfulness note and, when
    measured, its quality card in one line (`counterclip.quality.QualityCard.compact`)."""
    values = np.asarray(pixel_map, dtype=np.float64)
    scale = MapScale.of(values)
    notes = [faithfulness.describe()] if faithfulness is not None else []
    notes += [card.compact()] if card is not None else []
    return Tile(title, overlay(image, values, scale=scale), scale, unit=unit, notes=notes)


@dataclass(frozen=True)
class _Checks:
    """What each map of a report is measured for: its faithfulness line, its quality card."""

    faithfulness: bool = True
    quality: bool = False

    def faithful(self, *args: Any, **kwargs: Any) -> Any:
        return map_faithfulness(*args, **kwargs) if self.faithfulness else None

    def card(
        self, model: ClipModel, image: Image.Image, texts: Any, exp: Any, method: str, **targets: Any
    ) -> Any:
        """The map's `QualityCard` (``targets``: ``target`` and ``foil``), or None when not asked."""
        return (
            map_quality(model, image, texts, explanation=exp, method=method, **targets)
            if self.quality
            else None
        )


def _quoted(text: str) -> str:
    return f"\u201c{text}\u201d"


def image_embedding_of(model: ClipModel, image: Image.Image) -> torch.Tensor:
    """The image's embedding as the explainers compute it (squashed to the model's size)."""
    codec = PixelCodec.of(model)
    with torch.no_grad():
        return model.image_features(codec.to_model(codec.pil_to_pixels(image).to(model.device)))[0]


def text_embedding_of(model: ClipModel, text: str) -> torch.Tensor:
    with torch.no_grad():
        return model.text_features(model.tokenize([text]).to(model.device))[0]


def counterfactual_maps(
    model: ClipModel,
    result: Any,
    root: str | Path,
    query_image: Image.Image | None = None,
    load_image: ImageLoader | None = None,
    faithfulness: bool = True,
    progress: Progress | None = None,
    quality: bool = False,
) -> CounterfactualMaps:
    """The maps of a counterfactual report, as titled tiles.

    Args:
        model: the model the index was built with.
        result: a ``CounterfactualResult`` or its ``to_dict()``.
        root: the index's image folder (item paths are relative to it).
        query_image: the query image; without it only image-side pair maps are drawn.
        load_image: ``path -> PIL image or None`` for indexed files (e.g. the engine's decoder, so a map
            shows the image the index embedded). Default: `open_image`.
        faithfulness: measure each map's faithfulness for its image (a few batched forward passes per
            map, no gradients). Default True.
        progress: called with ``(done, total)`` after each answer's maps.
        quality: add each map's quality card (`counterclip.explainers.quality.map_quality`). Default False.

    Returns:
        `CounterfactualMaps`: the query pair's map (titled by its p(match): `pair_map_title`); per
        image-side answer its pair map (titled the same way) and "why this rather than the original" over the answer
        (`image_counterfactual_maps`); per caption its words (the changed ones marked) and the image
        regions that favour it over the original text (`text_counterfactual_maps`); in flip mode the
        original's label probabilities.
    """
    data = as_result_dict(result)
    load = load_image or open_image
    method, text_method = map_method(model), map_method(model, "text")
    text = data.get("text") or data.get("query", {}).get("target")  # flip mode: explain the target label
    maps = CounterfactualMaps()
    if not text:
        return maps
    measure = _Checks(faithfulness, quality)
    labels = list(data.get("query", {}).get("labels") or [])
    flip = data.get("mode") == "flip" and bool(labels)
    if flip and query_image is not None:
        maps.query_probabilities = label_probabilities(model, query_image, labels)
    if query_image is not None:
        maps.query.append(_query_tile(model, query_image, text, method, measure, data.get("original")))
    items = [i for i in data.get("items", []) if i.get("path") or i.get("text")]
    for done, item in enumerate(items, start=1):
        if data.get("side") == "image" and item.get("path"):
            image = load(Path(root) / item["path"])
            _add_image_answer(
                maps, model, query_image, image, text, (method, measure), item, labels if flip else []
            )
        elif data.get("side") == "text" and item.get("text") and query_image is not None:
            maps.items[item["id"]] = _text_side_tiles(
                model, query_image, text, item["text"], text_method, measure
            )
        if progress is not None:
            progress(done, len(items))
    return maps


def _add_image_answer(
    maps: CounterfactualMaps,
    model: ClipModel,
    query_image: Image.Image | None,
    image: Image.Image | None,
    text: str,
    how: tuple[str, _Checks],
    item: Mapping[str, Any],
    labels: list[str],
) -> None:
    """An image answer's tiles (and, in flip mode, its label probabilities), when its file is readable."""
    if image is None:
        return
    maps.items[item["id"]] = _image_side_tiles(model, query_image, image, text, *how, item)
    if labels:
        maps.item_probabilities[item["id"]] = label_probabilities(model, image, labels)


def _query_tile(
    model: ClipModel,
    query_image: Image.Image,
    text: str,
    method: str,
    measure: _Checks,
    original: Mapping[str, Any] | None = None,
) -> Tile:
    """The query pair's map: what in the original counts toward the text (why it matches, when it does:
    by the result's reading of the ``original``)."""
    pair = explain(model, query_image, text, method=method)
    return map_tile(
        pair_map_title(text, (original or {}).get("p_match"), "the original"),
        query_image,
        pair.pixel_map,
        measure.faithful(model, query_image, text, pair.pixel_map),
        card=measure.card(model, query_image, text, pair, method),
    )


def label_probabilities(model: ClipModel, image: Image.Image, labels: Sequence[str]) -> dict[str, float]:
    """The zero-shot probability of each label for ``image`` (encoded as the engine encodes files)."""
    with torch.no_grad():
        values = model.pair_score.label_probabilities(
            model.encode_pil([image]), model.encode_texts(list(labels))
        )[0]
    return {label: float(p) for label, p in zip(labels, values, strict=True)}


def _image_side_tiles(
    model: ClipModel,
    query_image: Image.Image | None,
    image: Image.Image,
    text: str,
    method: str,
    measure: _Checks,
    item: Mapping[str, Any] | None = None,
) -> list[Tile | TokenRow]:
    matches = pair_map_title(text, (item or {}).get("p_match"))  # "why it matches" only for a match
    if query_image is None:
        pair = explain(model, image, text, method=method)
        card = measure.card(model, image, text, pair, method)
        return [
            map_tile(
                matches,
                image,
                pair.pixel_map,
                measure.faithful(model, image, text, pair.pixel_map),
                card=card,
            )
        ]
    pair, margin = image_counterfactual_maps(model, query_image, image, text, method=method)
    text_emb, query_emb = text_embedding_of(model, text), image_embedding_of(model, query_image)
    toward = EmbeddingMargin(toward=text_emb, away=query_emb, score=model.pair_score)
    like_original = PairWith(query_emb, model.pair_score, "the original image")
    like_text = PairWith(text_emb, model.pair_score, _quoted(text))
    return [
        map_tile(
            matches,
            image,
            pair.pixel_map,
            measure.faithful(model, image, text, pair.pixel_map),
            card=measure.card(model, image, text, pair, method, foil=like_original),
        ),
        map_tile(
            "why this image rather than the original",
            image,
            margin.pixel_map,
            measure.faithful(model, image, text, margin.pixel_map, target=toward),
            unit="its lead over the original",
            card=measure.card(model, image, text, margin, method, target=toward, foil=like_text),
        ),
    ]


def _text_side_tiles(
    model: ClipModel,
    query_image: Image.Image,
    original: str,
    answer: str,
    method: str,
    measure: _Checks,
) -> list[Tile | TokenRow]:
    pair, margin = text_counterfactual_maps(model, query_image, original, answer, method=method)
    shown: list[Tile | TokenRow] = []
    if pair.tokens is not None and pair.token_map is not None:
        _, added = changed_words(original, answer)
        values = np.asarray(pair.token_map, dtype=np.float64).reshape(-1)
        shown.append(
            TokenRow(
                f"which words of {_quoted(answer)} count for its score with the image",
                [str(t) for t in pair.tokens],
                values,
                MapScale.of(values),
                token_positions(pair.tokens, answer, added),
            )
        )
    shown.append(
        map_tile(
            f"why {_quoted(answer)} rather than the original text",
            query_image,
            margin.pixel_map,
            measure.faithful(
                model,
                query_image,
                [answer, original],
                margin.pixel_map,
                target=Margin(0, 1, model.pair_score),
            ),
            unit="its lead over the original text",
            card=measure.card(
                model,
                query_image,
                [answer, original],
                margin,
                method,
                target=Margin(0, 1, model.pair_score),
                foil=PairWith(text_embedding_of(model, original), model.pair_score, _quoted(original)),
            ),
        )
    )
    return shown


def write_counterfactual_report(
    path: str | Path,
    result: Any,
    root: str | Path,
    query_image: Image.Image | None = None,
    maps: CounterfactualMaps | None = None,
    captions: Mapping[int, Sequence[str]] | None = None,
    query_captions: Sequence[str] = (),
    score: PairScore | None = None,
) -> Path:
    """Render a counterfactual result to one self-contained HTML file (atomically).

    Args:
        path: the HTML file to write.
        result: a ``CounterfactualResult`` or its ``to_dict()``.
        root: the index's image folder (thumbnails are read from it).
        query_image: shown at the top.
        maps: from `counterfactual_maps`; None for a report without maps.
        captions: per image id, its captions in the index (shown under the pictures).
        query_captions: the query image's captions.
        score: the model's pair score (the legend of the numbers names its scale and range).

    Returns:
        The path written.
    """
    maps = maps or CounterfactualMaps()
    page = counterfactual_report(
        as_result_dict(result),
        root,
        query_image=query_image,
        maps=maps.items,
        query_maps=maps.query,
        captions=captions,
        query_captions=query_captions,
        query_probabilities=maps.query_probabilities,
        item_probabilities=maps.item_probabilities,
        score=score,
    )
    return write_text_atomic(path, page)
