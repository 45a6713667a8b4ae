"""Integrated gradients (Captum): on pixels for image maps, on the token-embedding layer for text maps.

Image baseline: a black image (in the model's normalised space). Text baseline: the same token sequence
with every token between start and end of text replaced by a neutral token (the padding token, or "."
when padding and end-of-text share an id), so the end-of-text position the embedding is read from does
not move. Captum's convergence delta ``sum(attributions) - (f(x) - f(baseline))`` is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from counterclip.errors import InputError
from counterclip.explainers._core.common import (
    Cost,
    PreparedInputs,
    image_embedding,
    image_grid,
    model_guard,
    pool_to_grid,
    text_embedding,
)
from counterclip.explainers._core.registry import Method, by_modality
from counterclip.explainers._core.targets import Target
from counterclip.explainers.base import Explanation
from counterclip.models.base import ClipModel


def image_ig(
    model: ClipModel, inputs: PreparedInputs, target: Target, steps: int = 32, internal_batch_size: int = 16
) -> Explanation:
    """Integrated gradients of ``target`` over the image pixels (black baseline).

    Args:
        model: a CLIP model.
        inputs: from `prepare`.
        target: the score explained.
        steps: Riemann steps along the path. Default 32.
        internal_batch_size: path points per forward pass. Default 16.

    Returns:
        `Explanation` with ``pixel_map (H, W)`` (signed attribution summed over channels, at the image's
        size), ``patch_map`` pooled on the patch grid, ``extras['delta']``, ``extras['baseline_score']`` and
        ``extras['attribution_sum']``.
    """
    from captum.attr import IntegratedGradients

    cost = Cost()
    with model_guard(model):
        text_emb = text_embedding(model, inputs.tokens)

        def forward(model_input: torch.Tensor) -> torch.Tensor:
            return target(model.image_features(model_input), text_emb)

        model_input = inputs.codec.to_model(inputs.pixels)
        baseline = inputs.codec.to_model(torch.zeros_like(inputs.pixels))
        attributions, delta = IntegratedGradients(forward).attribute(
            model_input,
            baselines=baseline,
            n_steps=steps,
            internal_batch_size=internal_batch_size,
            return_convergence_delta=True,
        )
        with torch.no_grad():
            score, base_score = (float(v) for v in forward(torch.cat([model_input, baseline])))
    cost.forward, cost.backward = steps + 2, steps
    per_pixel = attributions[0].sum(dim=0).detach().double().cpu().numpy()  # (h, w) at the model's size
    pixel_map = _resize(per_pixel, (inputs.image.height, inputs.image.width))
    return Explanation(
        method="ig",
        modality="image",
        score=score,
        pixel_map=pixel_map,
        patch_map=pool_to_grid(per_pixel, image_grid(model)),
        explains=target.describe(inputs.texts),
        forward_passes=cost.forward,
        backward_passes=cost.backward,
        seconds=cost.seconds,
        extras={
            "delta": float(delta.reshape(-1)[0]),
            "baseline_score": base_score,
            "attribution_sum": float(attributions.sum()),
            "steps": steps,
        },
    )


def _resize(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a per-pixel attribution map to ``size`` ``(H, W)`` (bilinear)."""
    if values.shape == size:
        return values
    image = Image.fromarray(values.astype(np.float32), mode="F")
    return np.asarray(image.resize((size[1], size[0]), Image.BILINEAR), dtype=np.float64)


def text_baseline(model: ClipModel, tokens: torch.Tensor) -> torch.Tensor:
    """``tokens (1, L)`` with the text's own tokens set to a neutral id (the read-out position kept)."""
    positions = model.text_positions(tokens)[0]
    empty = model.tokenize([""]).to(tokens.device)
    pad_id = int(empty[0, -1])
    pooled_id = int(tokens[0, positions.pooled])
    neutral = pad_id if pad_id != pooled_id else int(model.tokenize(["."])[0, 1])
    baseline = tokens.clone()
    baseline[0, positions.content] = neutral
    if model.text_positions(baseline)[0].pooled != positions.pooled:
        raise InputError(
            "cannot build a text baseline that keeps the end-of-text position for this tokenizer"
        )
    return baseline


def text_ig(
    model: ClipModel, inputs: PreparedInputs, target: Target, steps: int = 32, internal_batch_size: int = 16
) -> Explanation:
    """Integrated gradients of ``target`` over the caption's tokens (`LayerIntegratedGradients` on embeddings).

    Args:
        model: a CLIP model.
        inputs: from `prepare` with exactly one text.
        target: the score explained.
        steps: Riemann steps. Default 32.
        internal_batch_size: path points per forward pass. Default 16.

    Returns:
        `Explanation` with ``tokens`` and ``token_map (T,)`` (attribution summed over the embedding width),
        ``extras['delta']``, ``extras['baseline_score']``, ``extras['attribution_sum']``.
    """
    from captum.attr import LayerIntegratedGradients

    if len(inputs.texts) != 1:
        raise InputError("text maps explain one caption: pass a single text (no label set)")
    cost = Cost()
    with model_guard(model):
        image_emb = image_embedding(model, inputs.codec, inputs.pixels)

        def forward(tokens: torch.Tensor) -> torch.Tensor:
            return target(image_emb, model.text_features(tokens))

        baseline = text_baseline(model, inputs.tokens)
        attributions, delta = LayerIntegratedGradients(forward, model.token_embedding()).attribute(
            inputs.tokens,
            baselines=baseline,
            n_steps=steps,
            internal_batch_size=internal_batch_size,
            return_convergence_delta=True,
        )
        with torch.no_grad():
            score, base_score = float(forward(inputs.tokens)[0]), float(forward(baseline)[0])
    cost.forward, cost.backward = steps + 2, steps
    content = model.text_positions(inputs.tokens)[0].content
    values = attributions[0, content].sum(dim=-1).detach().double().cpu().numpy()
    tokens = model.token_strings(inputs.texts[0])
    count = min(len(tokens), len(values))
    return Explanation(
        method="ig",
        modality="text",
        score=score,
        tokens=tokens[:count],
        token_map=values[:count],
        explains=target.describe(inputs.texts),
        forward_passes=cost.forward,
        backward_passes=cost.backward,
        seconds=cost.seconds,
        extras={
            "delta": float(delta.reshape(-1)[0]),
            "baseline_score": base_score,
            "attribution_sum": float(attributions.sum()),
            "steps": steps,
        },
    )


@dataclass(frozen=True)
class IgOptions:
    """Options of the ``ig`` method."""

    steps: int = 32  # Riemann steps along the path from the baseline
    internal_batch_size: int = 16  # path points per forward pass


def _run(
    model: ClipModel, inputs: PreparedInputs, target: Target, modality: str, options: IgOptions
) -> Explanation:
    def image_map() -> Explanation:
        return image_ig(model, inputs, target, options.steps, options.internal_batch_size)

    def text_map() -> Explanation:
        return text_ig(model, inputs, target, options.steps, options.internal_batch_size)

    return by_modality(modality, image_map, text_map)


def _figures(explanation: Explanation) -> dict[str, float]:
    """Captum's convergence delta, as its absolute value."""
    return {"abs_delta": abs(explanation.extras["delta"])} if "delta" in explanation.extras else {}


METHOD = Method(
    name="ig",
    description="integrated gradients (Captum) on pixels (black baseline) and token embeddings",
    modalities=("image", "text", "both"),
    options=IgOptions,
    run=_run,
    evaluation_options={"steps": 32},
    cheap_options={"steps": 4},
    figures=_figures,
)
