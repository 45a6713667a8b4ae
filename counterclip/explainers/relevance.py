"""Gradient-weighted attention relevance (Chefer et al. 2021) for ViT image towers and text towers.

For each included block ``b`` with attention ``A_b (n, heads, L, L)`` and its gradient ``G_b``::

    R = I;  Abar_b = mean_heads((G_b * A_b)^+);  R <- R + Abar_b @ R

The image map is the row of ``R`` the image embedding reads (the class token; for a tower without one,
the mean of the token rows, or, for an attention-pooling head such as SigLIP's, the head's own
gradient-weighted attention ``mean_heads((G_pool * A_pool)^+)`` applied to ``R``) over the patch tokens,
reshaped to the model's patch grid and upsampled to the image; the text map is the row of the position the
text embedding is read at (CLIP's end of text, BERT's ``[CLS]``, SigLIP's last position) over the text's own
tokens. One forward and one backward pass give both maps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from counterclip.errors import InputError
from counterclip.explainers._core.common import (
    Cost,
    PreparedInputs,
    image_embedding,
    model_guard,
    select_blocks,
    text_embedding,
    upsample,
)
from counterclip.explainers._core.registry import Method
from counterclip.explainers._core.targets import Target
from counterclip.explainers.base import Explanation
from counterclip.models.base import ClipModel
from counterclip.models.towers import TowerInternals


def rollout(probs: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """Chefer's relevance rule over blocks in order.

    Args:
        probs: per block, attention probabilities ``(n, heads, L, L)``.
        grads: per block, the score's gradient w.r.t. them (same shapes).

    Returns:
        ``R (n, L, L)``: row ``i`` says how much each token contributed to token ``i``'s output.
    """
    n, _, length, _ = probs[0].shape
    relevance = torch.eye(length, dtype=probs[0].dtype, device=probs[0].device).expand(n, length, length)
    for attn, grad in zip(probs, grads, strict=True):
        weighted = (grad * attn).clamp(min=0).mean(dim=1)
        relevance = relevance + weighted @ relevance
    return relevance


def readout_row(
    tower: TowerInternals,
    relevance: torch.Tensor,
    pool_probs: torch.Tensor | None = None,
    pool_grads: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(L,)`` relevance of every token for the tower's embedding, from one image's ``R (L, L)``.

    Args:
        tower: the image tower (its ``readout`` says how the embedding reads the tokens).
        relevance: `rollout` of one image.
        pool_probs: a ``pool`` readout's attention ``(1, heads, Lq, Lk)`` over the tokens from ``pool_from`` on.
        pool_grads: the score's gradient w.r.t. ``pool_probs``.
    """
    if tower.readout == "token":
        return relevance[tower.readout_token]
    if tower.readout == "mean":
        return relevance[tower.pool_from :].mean(dim=0)
    weighted = (pool_grads * pool_probs).clamp(min=0).mean(dim=1)[0]  # (Lq, Lk)
    return (weighted @ relevance[tower.pool_from :]).sum(dim=0)


def relevance(
    model: ClipModel,
    inputs: PreparedInputs,
    target: Target,
    modality: str = "image",
    blocks: int | Sequence[int] | None = None,
) -> Explanation:
    """Relevance map of the image patches and/or the text tokens for ``target``.

    Args:
        model: a CLIP model with transformer towers.
        inputs: from `prepare` (one image; one caption, or a label set for image maps).
        target: the score explained (see `targets`).
        modality: ``image``, ``text`` or ``both``. Default ``image``.
        blocks: which blocks to include: None = all (default), k = the last k, or a list of indices.

    Returns:
        `Explanation` with ``pixel_map (H, W)`` at the image's own size and ``patch_map (gh, gw)`` (image),
        and/or ``tokens`` and ``token_map (T,)`` (text), plus ``extras['blocks']`` / ``extras['text_blocks']``.
    """
    plan = _plan(model, inputs, modality, blocks)
    cost = Cost()
    with model_guard(model):
        score, captured, grads = _captured_gradients(model, inputs, target, plan, cost)
    explanation = Explanation(
        method="relevance",
        modality=modality,
        score=float(score.detach()),
        explains=target.describe(inputs.texts),
        extras={"blocks": plan.image_blocks, "text_blocks": plan.text_blocks},
    )
    if plan.image:
        image_part = slice(0, len(plan.image_blocks))
        pool = (captured[-1], grads[-1]) if plan.pooled else (None, None)
        patch_map = _patch_map(model.image_tower(), captured[image_part], grads[image_part], pool)
        explanation.patch_map = patch_map
        explanation.pixel_map = upsample(patch_map, (inputs.image.height, inputs.image.width))
    if plan.text:
        text_part = slice(len(plan.image_blocks), len(plan.image_blocks) + len(plan.text_blocks))
        explanation.tokens, explanation.token_map = _token_map(
            model, inputs, captured[text_part], grads[text_part]
        )
    explanation.forward_passes, explanation.backward_passes, explanation.seconds = (
        cost.forward,
        cost.backward,
        cost.seconds,
    )
    return explanation


@dataclass(frozen=True)
class _Plan:
    """Which maps one call computes, and from which blocks."""

    image: bool  # a map over the image patches
    text: bool  # a map over the caption's tokens
    image_blocks: list[int]  # image tower blocks included (empty without an image map)
    text_blocks: list[int]  # text tower blocks included (empty without a text map)
    pooled: bool  # the image tower reads out by attention pooling: its pool attention is captured too


def _plan(
    model: ClipModel, inputs: PreparedInputs, modality: str, blocks: int | Sequence[int] | None
) -> _Plan:
    """The maps ``modality`` asks for and their blocks; refuses a label set for text maps and image maps of
    a conv tower."""
    if modality not in ("image", "text", "both"):
        raise InputError(f"modality must be image, text or both, got {modality!r}")
    want_image, want_text = modality in ("image", "both"), modality in ("text", "both")
    if want_text and len(inputs.texts) != 1:
        raise InputError("text maps explain one caption: pass a single text (no label set)")
    image_tower, text_tower = model.image_tower(), model.text_tower()
    if want_image and image_tower.grid is None:
        raise InputError("relevance maps need a ViT image tower; use --method gradcam for conv towers")
    return _Plan(
        image=want_image,
        text=want_text,
        image_blocks=select_blocks(len(image_tower.blocks), blocks) if want_image else [],
        text_blocks=select_blocks(len(text_tower.blocks), blocks) if want_text else [],
        pooled=want_image and image_tower.readout == "pool",
    )


def _captured_gradients(
    model: ClipModel, inputs: PreparedInputs, target: Target, plan: _Plan, cost: Cost
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """One forward pass capturing the planned attention maps, one backward pass of the score to them;
    -> (score, attention maps: image blocks, text blocks, pool; their gradients, zeros where unused)."""
    image_tower, text_tower = model.image_tower(), model.text_tower()
    with (
        image_tower.capture_attention(plan.image_blocks) as image_cap,
        text_tower.capture_attention(plan.text_blocks) as text_cap,
        image_tower.capture_pool_attention() if plan.pooled else contextlib.nullcontext() as pool_cap,
    ):
        if plan.image:
            image_emb = model.image_features(inputs.codec.to_model(inputs.pixels))
        else:
            image_emb = image_embedding(model, inputs.codec, inputs.pixels)
        text_emb = model.text_features(inputs.tokens) if plan.text else text_embedding(model, inputs.tokens)
        score = target(image_emb, text_emb)[0]
    cost.forward += 1
    captured = image_cap.ordered() + text_cap.ordered() + (pool_cap.ordered() if plan.pooled else [])
    grads = torch.autograd.grad(score, captured, allow_unused=True)
    cost.backward += 1
    return (
        score,
        captured,
        [torch.zeros_like(p) if g is None else g for p, g in zip(captured, grads, strict=True)],
    )


def _patch_map(
    tower: TowerInternals,
    attention: list[torch.Tensor],
    grads: list[torch.Tensor],
    pool: tuple[torch.Tensor | None, torch.Tensor | None],
) -> np.ndarray:
    """The relevance of each image patch to the image embedding, on the patch grid ``(gh, gw)``."""
    row = readout_row(tower, rollout(attention, grads)[0], *pool)
    gh, gw = tower.grid
    return row[tower.prefix_tokens :].detach().double().cpu().numpy().reshape(gh, gw)


def _token_map(
    model: ClipModel, inputs: PreparedInputs, attention: list[torch.Tensor], grads: list[torch.Tensor]
) -> tuple[list[str], np.ndarray]:
    """The caption's tokens and the relevance of each to the text embedding (``(T,)``)."""
    relevance = rollout(attention, grads)[0]
    positions = model.text_positions(inputs.tokens)[0]
    values = relevance[positions.pooled, positions.content].detach().double().cpu().numpy()
    tokens = model.token_strings(inputs.texts[0])
    count = min(len(tokens), len(values))
    return tokens[:count], values[:count]


@dataclass(frozen=True)
class RelevanceOptions:
    """Options of the ``relevance`` method."""

    blocks: int | tuple[int, ...] | None = None  # None: all blocks; k: the last k; or block indices


def _run(
    model: ClipModel, inputs: PreparedInputs, target: Target, modality: str, options: RelevanceOptions
) -> Explanation:
    return relevance(model, inputs, target, modality=modality, blocks=options.blocks)


METHOD = Method(
    name="relevance",
    description="gradient-weighted attention relevance (Chefer et al. 2021), ViT patches and text tokens",
    modalities=("image", "text", "both"),
    options=RelevanceOptions,
    run=_run,
)
