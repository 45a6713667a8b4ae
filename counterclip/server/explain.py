"""The server's only door to the explainers and the report renderer (a rename there is an edit here).

`item_maps` gives the maps the page shows for one answer; `report_html` the self-contained HTML report
of a whole query. Maps use the report's choice of explainer (relevance on a ViT tower, Grad-CAM otherwise).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from counterclip.errors import InputError
from counterclip.explainers import (
    EmbeddingMargin,
    Margin,
    image_counterfactual_maps,
    text_counterfactual_maps,
)
from counterclip.explainers.figure import MapScale
from counterclip.explainers.metrics import map_faithfulness
from counterclip.explainers.quality import PairWith, map_quality
from counterclip.index_builder.decode import DecodeError, load_bytes
from counterclip.report import overlay, png_data_uri, token_strip
from counterclip.report.counterfactual import (
    CounterfactualMaps,
    counterfactual_maps,
    image_embedding_of,
    map_method,
    text_embedding_of,
)
from counterclip.report.html import counterfactual_report
from counterclip.report.reading import pair_map_title, sentence

MAP_SIDE = 768  # longest side of a map shown on the page (larger images are shrunk before explaining)


def _display(image: Image.Image) -> Image.Image:
    return ImageOps.contain(image, (MAP_SIDE, MAP_SIDE)) if max(image.size) > MAP_SIDE else image


def _legend(values: np.ndarray, unit: str = "the score") -> dict[str, Any]:
    """How to read a map's colours: the colour bar (the scale `overlay` used), its ends, its reading, and
    a flag in words for an empty or flat map (`counterclip.explainers.figure.MapScale.legend`)."""
    return MapScale.of(np.asarray(values, dtype=np.float64)).legend(unit)


def _image_map(
    title: str,
    caption: str,
    image: Image.Image,
    pixel_map: np.ndarray,
    faithfulness: Any = None,
    unit: str = "the score",
    card: Any = None,
) -> dict[str, Any]:
    shown = overlay(image, pixel_map)
    return {
        "kind": "image",
        "title": title,
        "caption": caption,
        "png": png_data_uri(shown),
        "width": shown.width,
        "height": shown.height,
        "legend": _legend(pixel_map, unit),
        "faithfulness": None
        if faithfulness is None
        else {**faithfulness.to_dict(), "text": faithfulness.describe()},
        **({"quality": card.to_dict()} if card is not None else {}),
    }


def _plain(title: str, caption: str, image: Image.Image) -> dict[str, Any]:
    return {
        "kind": "image",
        "title": title,
        "caption": caption,
        "png": png_data_uri(image.convert("RGB")),
        "width": image.width,
        "height": image.height,
        "legend": None,
    }


def _token_map(title: str, caption: str, tokens: list[str], values: np.ndarray) -> dict[str, Any]:
    """Tokens with their values and colours (the page draws them as text), and the same as a PNG strip."""
    strip = token_strip(tokens, values)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    colours = MapScale.of(values).colours(values) if len(values) else np.zeros((0, 3))
    return {
        "kind": "tokens",
        "title": title,
        "caption": caption,
        "tokens": [
            {
                "text": str(t),
                "value": float(v),
                "colour": "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb)),
            }
            for t, v, rgb in zip(tokens, values, colours, strict=False)
        ],
        "png": png_data_uri(strip),
        "width": strip.width,
        "height": strip.height,
        "legend": _legend(values),
    }


def item_maps(
    model: Any,
    side: str,
    query_image: Image.Image,
    text: str,
    result_image: Image.Image | None = None,
    result_text: str | None = None,
    p_match: float | None = None,
    quality: bool = False,
) -> list[dict[str, Any]]:
    """The maps of one counterfactual answer, each as a PNG data URI with a legend (``quality``: and each
    map's quality card, `counterclip.explainers.quality.map_quality`, under ``quality``).

    Args:
        model: the index's `ClipModel`.
        side: ``image`` (the answer is ``result_image``) or ``text`` (the answer is ``result_text``).
        query_image: the original image.
        text: the query text (for flip: the target label).
        result_image / result_text: the answer.
        p_match: the answer pair's calibrated p(match), so its pair map is titled by what it shows
            ("Why it matches" only for a match; `counterclip.report.reading.pair_map_title`).

    Returns:
        ``[{kind, title, caption, png, width, height, legend}]`` (``tokens`` too for a word map; ``legend``
        None for the plain images): the original and the answer (or the image), why the answer
        matches, and why it rather than the original.
    """
    if not hasattr(model, "image_tower"):
        raise InputError("explanation maps need a CLIP model with towers to explain; this engine's has none")
    query_image = _display(query_image)
    if side == "image":
        assert result_image is not None
        return _image_answer_maps(model, query_image, _display(result_image), text, p_match, _grader(quality))
    assert result_text is not None
    return _text_answer_maps(model, query_image, text, result_text, p_match, _grader(quality))


def _grader(quality: bool) -> Callable[..., Any]:
    """``grade(model, image, texts, explanation, **targets)``: the map's card, or None when not asked."""
    if not quality:
        return lambda *args, **kwargs: None
    return lambda model, image, texts, exp, **targets: map_quality(
        model, image, texts, explanation=exp, method=exp.method, **targets
    )


def pair_score_of(model: Any, image: Image.Image, text: str) -> float:
    """The model's score of one (image, text) pair, encoded as the engine encodes files."""
    import torch

    with torch.no_grad():
        image_emb, text_emb = model.encode_pil([image]), model.encode_texts([text])
    return float(model.pair_score.pairs(image_emb, text_emb).reshape(-1)[0])


def _image_answer_maps(
    model: Any,
    query_image: Image.Image,
    result_image: Image.Image,
    text: str,
    p_match: float | None,
    grade: Callable[..., Any],
) -> list[dict[str, Any]]:
    """An image answer: the two images, why the answer matches the text, why it rather than the original."""
    pair, margin = image_counterfactual_maps(model, query_image, result_image, text, method=map_method(model))
    toward = EmbeddingMargin(
        toward=text_embedding_of(model, text),
        away=image_embedding_of(model, query_image),
        score=model.pair_score,
    )
    return [
        _plain("The original", "The original image, for comparison.", query_image),
        _plain("The answer", "The answer image.", result_image),
        _image_map(
            sentence(pair_map_title(None, p_match)),
            f"The parts of the answer that make the model score it for \u201c{text}\u201d"
            + _reading(p_match),
            result_image,
            pair.pixel_map,
            map_faithfulness(model, result_image, text, pair.pixel_map),
            card=grade(
                model, result_image, text, pair, foil=PairWith(toward.away, model.pair_score, "the original")
            ),
        ),
        _image_map(
            "Why it rather than the original",
            f"The parts of the answer that pull it toward \u201c{text}\u201d and away from the original image.",
            result_image,
            margin.pixel_map,
            map_faithfulness(model, result_image, text, margin.pixel_map, target=toward),
            "its lead over the original",
            grade(
                model,
                result_image,
                text,
                margin,
                target=toward,
                foil=PairWith(toward.toward, model.pair_score, repr(text)),
            ),
        ),
    ]


def _text_answer_maps(
    model: Any,
    query_image: Image.Image,
    text: str,
    result_text: str,
    p_match: float | None,
    grade: Callable[..., Any],
) -> list[dict[str, Any]]:
    """A caption answer: the image, why the caption matches it (pixels, then words), why it rather than
    the original text."""
    pair, margin = text_counterfactual_maps(
        model, query_image, text, result_text, method=map_method(model, "text")
    )
    like_text = PairWith(text_embedding_of(model, text), model.pair_score, repr(text))
    lead = Margin(0, 1, model.pair_score)
    maps = [
        _plain("The image", "The original image both texts are scored against.", query_image),
        _image_map(
            sentence(pair_map_title(None, p_match)),
            f"The parts of the image the model links to \u201c{result_text}\u201d" + _reading(p_match),
            query_image,
            pair.pixel_map,
            map_faithfulness(model, query_image, result_text, pair.pixel_map),
            card=grade(model, query_image, result_text, pair, foil=like_text),
        ),
    ]
    if pair.tokens is not None and pair.token_map is not None:
        maps.append(
            _token_map(
                "Which words count",
                f"How much each word of \u201c{result_text}\u201d counts for its score with the image.",
                list(pair.tokens),
                np.asarray(pair.token_map),
            )
        )
    maps.append(
        _image_map(
            "Why it rather than the original text",
            f"The parts of the image that favour \u201c{result_text}\u201d over \u201c{text}\u201d.",
            query_image,
            margin.pixel_map,
            map_faithfulness(model, query_image, [result_text, text], margin.pixel_map, target=lead),
            "its lead over the original text",
            grade(model, query_image, [result_text, text], margin, target=lead, foil=like_text),
        )
    )
    return maps


def _reading(p_match: float | None) -> str:
    """The end of a pair map's caption: the pair's p(match), when a calibration gives one."""
    return f" (p(match) {p_match:.2f})." if p_match is not None else "."


def _copy_answer_images(
    items: list[dict[str, Any]], image_of: Callable[[int], tuple[str, bytes] | None], root: Path
) -> dict[int, Image.Image]:
    """Copy each image answer's checked bytes into ``root`` (its own relative path, never outside it) and
    return the decoded pictures by id; unreadable or missing ones are left out."""
    kept: dict[int, Image.Image] = {}
    for item in items:
        if item.get("kind") != "image" or item["id"] in kept:
            continue
        found = image_of(int(item["id"]))
        if found is None:
            continue
        rel, payload = found
        target = (root / rel).resolve()
        if not str(target).startswith(str(root.resolve()) + os.sep):
            continue
        try:
            kept[item["id"]] = _display(load_bytes(payload).image)
        except DecodeError:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(payload)
    return kept


def report_html(
    model: Any,
    result: Any,
    query_image: Image.Image | None,
    image_of: Callable[[int], tuple[str, bytes] | None],
    with_maps: bool = True,
    quality: bool = False,
) -> str:
    """The self-contained HTML report of one counterfactual result (``quality``: each map's card too; the
    answers' cards come with the result).

    Args:
        model: the index's `ClipModel`.
        result: the engine's `CounterfactualResult`.
        query_image: the original image (shown at the top).
        image_of: id -> ``(path relative to the root, checked file bytes)`` or None; the report reads
            images only through it (copied into a private folder), never from the index root itself.
        with_maps: add each answer's maps (ViT models only).

    Returns:
        HTML text.
    """
    data = result.to_dict()
    query_image = _display(query_image) if query_image is not None else None
    with tempfile.TemporaryDirectory(prefix="counterclip-report-") as folder:
        root = Path(folder)
        items = list(data["items"]) + [i for group in data.get("baselines", {}).values() for i in group]
        kept = _copy_answer_images(items, image_of, root)
        by_path = {str((root / i["path"]).resolve()): kept[i["id"]] for i in items if i["id"] in kept}
        maps = (
            counterfactual_maps(
                model, data, root, query_image, lambda p: by_path.get(str(Path(p).resolve())), quality=quality
            )
            if with_maps
            else CounterfactualMaps()
        )
        return counterfactual_report(
            data,
            root,
            query_image=query_image,
            maps=maps.items,
            query_maps=maps.query,
            query_probabilities=maps.query_probabilities,
            item_probabilities=maps.item_probabilities,
            score=model.pair_score,
        )
