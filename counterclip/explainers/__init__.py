"""CLIP explainers behind one call: `explain(model, image, text, method=..., target=...) -> Explanation`.

Methods live in one registry (`REGISTRY`, see `counterclip.explainers._core.registry`): ``relevance``
(Chefer et al. 2021 gradient-weighted attention, ViT image and text towers), ``gradcam`` (Captum
LayerGradCam for ResNet towers, HiResCAM / Grad-CAM over tokens for ViT towers), ``ig`` (integrated
gradients on pixels / token embeddings), ``lime`` (superpixels / word masking) and ``pixel-cf``
(pixel-space counterfactual); each with a typed options dataclass. Targets are small callables on
embeddings (`PairSimilarity`, `LabelProbability`, `Margin`, `EmbeddingMargin`) that score through the
model's `PairScore`, so the same explainer serves a query, a counterfactual result and "why A rather
than B", and explains the score the engine moves.

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

from counterclip.calibration import model_match_probability
from counterclip.explainers import (
    gradcam,
    integrated_gradients,
    lime_explainers,
    pixel_counterfactual,
    relevance,
)
from counterclip.explainers._core.common import PixelCodec, prepare
from counterclip.explainers._core.registry import (
    METHODS,
    MODALITIES,
    OPTIONS,
    REGISTRY,
    Method,
    merge,
    register_method,
)
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
from counterclip.scores import PairScore

# The built-in methods, in the order listings and the evaluation show them. A new method: its module, and
# one line here.
register_method(relevance.METHOD)
register_method(gradcam.METHOD)
register_method(integrated_gradients.METHOD)
register_method(lime_explainers.METHOD)
register_method(pixel_counterfactual.METHOD)


def default_target(model: ClipModel, texts: Sequence[str]) -> Target:
    """Pair similarity for one text; probability of the first label for a label set."""
    score = model.pair_score
    return PairSimilarity(score) if len(texts) == 1 else LabelProbability(0, score)


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
        **options: the method's options (its options dataclass; see `OPTIONS`), e.g. ``blocks=2`` for
            relevance, ``layer="layer4"`` for gradcam. An unknown option raises.

    Returns:
        `Explanation` (``pixel_map (H, W)``, ``patch_map (gh, gw)``, ``tokens``/``token_map (T,)`` as asked);
        for one text's pair score, ``extras["p_match"]`` when the model has an absolute reading (its
        sigmoid, or the calibration shipped with its weights): the map's title follows it.
    """
    chosen = REGISTRY.get(method)
    chosen.check_modality(modality)
    settings = chosen.make_options(options)
    inputs = prepare(model, image, text)
    explained = target or default_target(model, inputs.texts)
    explanation = chosen.run(model, inputs, explained, modality, settings)
    own_score = isinstance(explained, PairSimilarity) and explained.score == model.pair_score
    p_match = model_match_probability(model, explanation.score) if own_score else None
    if p_match is not None:  # whether the pair matches titles the map ("why it matches" only for a match)
        explanation.extras.setdefault("p_match", p_match)
    return explanation


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
        "why this rather than the original": the map of ``score(result, text) - score(result, query_image)``
        (`EmbeddingMargin`), i.e. the regions that pull the result toward the text and away from the query.
    """
    from counterclip.explainers._core.common import image_embedding, text_embedding

    pair_map = explain(model, result_image, text, method=method)
    codec = PixelCodec.of(model)
    query_emb = image_embedding(model, codec, codec.pil_to_pixels(query_image).to(model.device))[0]
    text_emb = text_embedding(model, model.tokenize([text]).to(model.device))[0]
    margin = EmbeddingMargin(toward=text_emb, away=query_emb, score=model.pair_score)
    margin_map = explain(model, result_image, text, method=method, target=margin)
    margin_map.explains = f"why this image rather than the original, for {text!r}"
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
    modality = "both" if "both" in REGISTRY.get(method).modalities else "image"
    pair_map = explain(model, image, result_text, method=method, modality=modality)
    margin_map = explain(
        model, image, [result_text, original_text], method=method, target=Margin(0, 1, model.pair_score)
    )
    return pair_map, margin_map


__all__ = [
    "METHODS",
    "MODALITIES",
    "OPTIONS",
    "REGISTRY",
    "EmbeddingMargin",
    "Explanation",
    "LabelProbability",
    "Margin",
    "Method",
    "PairScore",
    "PairSimilarity",
    "PixelCodec",
    "Target",
    "default_layer",
    "default_target",
    "explain",
    "image_counterfactual_maps",
    "list_layers",
    "merge",
    "register_method",
    "text_counterfactual_maps",
]
