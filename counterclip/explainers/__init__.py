"""CLIP explainers behind one call: `explain(model, image, text, method=..., target=...) -> Explanation`.

Methods: ``relevance`` (Chefer et al. 2021 gradient-weighted attention, ViT image and text towers),
``gradcam`` (Captum LayerGradCam for ResNet towers, HiResCAM / Grad-CAM over tokens for ViT towers), ``ig`` (integrated
gradients on pixels / token embeddings), ``lime`` (superpixels / word masking) and ``pixel-cf``
(pixel-space counterfactual). Targets are small callables on embeddings (`PairSimilarity`,
`LabelProbability`, `Margin`, `EmbeddingMargin`), so the same explainer serves a query, a
counterfactual result and "why A rather than B".

Examples::

    from counterclip.explainers import explain
    from counterclip.models import load_model
    model = load_model("bundled:shapes", device="cpu")
    exp = explain(model, image, "a red circle", method="relevance", modality="both")
    exp.pixel_map.shape  # (image.height, image.width)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image

from counterclip.errors import InputError
from counterclip.explainers._core.common import PixelCodec, prepare
from counterclip.explainers._core.targets import (
    EmbeddingMargin,
    LabelProbability,
    Margin,
    PairSimilarity,
    Target,
)
from counterclip.explainers.base import Explanation
from counterclip.explainers.gradcam import default_layer, list_layers
from counterclip.models.base import ClipModel

METHODS: tuple[str, ...] = ("relevance", "gradcam", "ig", "lime", "pixel-cf")
#: Which modalities each method supports.
MODALITIES: dict[str, tuple[str, ...]] = {
    "relevance": ("image", "text", "both"),
    "gradcam": ("image",),
    "ig": ("image", "text", "both"),
    "lime": ("image", "text", "both"),
    "pixel-cf": ("image",),
}
#: Options each method accepts (anything else raises).
OPTIONS: dict[str, tuple[str, ...]] = {
    "relevance": ("blocks",),
    "gradcam": ("layer", "blocks", "rule"),
    "ig": ("steps", "internal_batch_size"),
    "lime": ("num_samples", "batch_size", "segmentation", "seed"),
    "pixel-cf": ("direction", "steps", "lr", "l2", "tv"),
}


def default_target(model: ClipModel, texts: Sequence[str]) -> Target:
    """Pair similarity for one text; probability of the first label for a label set."""
    return PairSimilarity(model.logit_scale) if len(texts) == 1 else LabelProbability(0, model.logit_scale)


def explain(
    model: ClipModel,
    image: Image.Image,
    text: str | Sequence[str],
    method: str = "relevance",
    target: Target | None = None,
    modality: str = "image",
    **options: Any,
) -> Explanation:
    """Explain the score of an (image, text) pair.

    Args:
        model: a loaded `ClipModel` (open_clip, Hugging Face or bundled).
        image: PIL image (any size; maps come back at its size; never modified).
        text: a caption, or a label set for `LabelProbability` / `Margin` targets.
        method: one of `METHODS`. Default ``relevance``.
        target: the score explained; default `PairSimilarity` (one text) or `LabelProbability` of label 0.
        modality: ``image`` (map over pixels and patches), ``text`` (map over tokens) or ``both``.
        **options: method options (see `OPTIONS`), e.g. ``blocks=2`` for relevance, ``layer="layer4"``.

    Returns:
        `Explanation` (``pixel_map (H, W)``, ``patch_map (gh, gw)``, ``tokens``/``token_map (T,)`` as asked).
    """
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if modality not in MODALITIES[method]:
        raise InputError(
            f"method {method} supports modality {', '.join(MODALITIES[method])}, not {modality!r}"
        )
    unknown = set(options) - set(OPTIONS[method])
    if unknown:
        raise InputError(f"unknown option(s) for {method}: {', '.join(sorted(unknown))}")
    inputs = prepare(model, image, text)
    target = target or default_target(model, inputs.texts)
    if method == "relevance":
        from counterclip.explainers.relevance import relevance

        return relevance(model, inputs, target, modality=modality, **options)
    if method == "gradcam":
        from counterclip.explainers.gradcam import gradcam

        return gradcam(model, inputs, target, **options)
    if method == "pixel-cf":
        from counterclip.explainers.pixel_counterfactual import pixel_counterfactual

        return pixel_counterfactual(model, inputs, target, **options)
    if method == "ig":
        from counterclip.explainers.integrated_gradients import image_ig as image_fn
        from counterclip.explainers.integrated_gradients import text_ig as text_fn
    else:
        from counterclip.explainers.lime_explainers import image_lime as image_fn
        from counterclip.explainers.lime_explainers import text_lime as text_fn
    text_options = {k: v for k, v in options.items() if k != "segmentation"}
    if modality == "image":
        return image_fn(model, inputs, target, **options)
    if modality == "text":
        return text_fn(model, inputs, target, **text_options)
    return merge(image_fn(model, inputs, target, **options), text_fn(model, inputs, target, **text_options))


def image_counterfactual_maps(
    model: ClipModel,
    query_image: Image.Image,
    result_image: Image.Image,
    text: str,
    method: str = "relevance",
) -> tuple[Explanation, Explanation]:
    """Maps for an image-side counterfactual (a result image found for the query image and text).

    Args:
        model: the CLIP model.
        query_image: the original image.
        result_image: the counterfactual image.
        text: the text both are scored against.
        method: an image method (default ``relevance``).

    Returns:
        ``(pair_map, margin_map)``, both over ``result_image``: its map for the pair score with ``text``, and
        "why this rather than the original": the map of ``cos(result, text) - cos(result, query_image)``
        (`EmbeddingMargin`), i.e. the regions that pull the result toward the text and away from the query.
    """
    from counterclip.explainers._core.common import PixelCodec, image_embedding, text_embedding

    pair_map = explain(model, result_image, text, method=method)
    codec = PixelCodec.of(model)
    query_emb = image_embedding(model, codec, codec.pil_to_pixels(query_image).to(model.device))[0]
    text_emb = text_embedding(model, model.tokenize([text]).to(model.device))[0]
    margin = EmbeddingMargin(toward=text_emb, away=query_emb, scale=model.logit_scale)
    margin_map = explain(model, result_image, text, method=method, target=margin)
    margin_map.target = f"why this image rather than the original, for {text!r}"
    return pair_map, margin_map


def text_counterfactual_maps(
    model: ClipModel, image: Image.Image, original_text: str, result_text: str, method: str = "relevance"
) -> tuple[Explanation, Explanation]:
    """Maps for a text-side counterfactual (a result caption found for the image and original text).

    Returns:
        ``(pair_map, margin_map)``: the result caption's map (image and, where supported, tokens) for
        its pair score, and the image map of the margin ``score(result_text) - score(original_text)``
        (`Margin`): the image regions that favour the counterfactual caption over the original.
    """
    modality = "both" if "both" in MODALITIES[method] else "image"
    pair_map = explain(model, image, result_text, method=method, modality=modality)
    margin_map = explain(
        model, image, [result_text, original_text], method=method, target=Margin(0, 1, model.logit_scale)
    )
    return pair_map, margin_map


def merge(image_exp: Explanation, text_exp: Explanation) -> Explanation:
    """One `Explanation` holding an image map and a text map (costs added, extras prefixed ``text_``)."""
    image_exp.modality = "both"
    image_exp.tokens, image_exp.token_map = text_exp.tokens, text_exp.token_map
    image_exp.forward_passes += text_exp.forward_passes
    image_exp.backward_passes += text_exp.backward_passes
    image_exp.seconds += text_exp.seconds
    image_exp.extras.update({f"text_{k}": v for k, v in text_exp.extras.items()})
    return image_exp


__all__ = [
    "METHODS",
    "MODALITIES",
    "OPTIONS",
    "EmbeddingMargin",
    "Explanation",
    "LabelProbability",
    "Margin",
    "PairSimilarity",
    "PixelCodec",
    "Target",
    "default_layer",
    "default_target",
    "explain",
    "image_counterfactual_maps",
    "list_layers",
    "merge",
    "text_counterfactual_maps",
]
