"""Pixel-space counterfactual: gradient ascent (or descent) on the image itself.

Optimises ``x`` in ``[0, 1]`` pixel space (fed to the model through its normalisation) to maximise
``direction * target(x) - l2 * mean((x - x0)^2) - tv * TV(x - x0)``; after every Adam step the image is
clamped to valid pixel values. The result is rounded to 8 bits, re-encoded from that PIL image and
re-scored, so the reported effect is the effect of an image that can actually be saved.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from counterclip.errors import InputError
from counterclip.explainers._core.common import (
    Cost,
    PreparedInputs,
    image_embedding,
    image_grid,
    model_guard,
    pixels_to_pil,
    pool_to_grid,
    text_embedding,
    upsample,
)
from counterclip.explainers._core.registry import Method
from counterclip.explainers._core.targets import Target
from counterclip.explainers.base import Explanation
from counterclip.models.base import ClipModel


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels of ``(n, 3, H, W)``."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def pixel_counterfactual(
    model: ClipModel,
    inputs: PreparedInputs,
    target: Target,
    direction: str = "increase",
    steps: int = 60,
    lr: float = 0.01,
    l2: float = 1.0,
    tv: float = 0.1,
) -> Explanation:
    """Edit the image to raise (or lower) ``target``, staying close to the original.

    Args:
        model: a CLIP model.
        inputs: from `prepare`.
        target: the score to move.
        direction: ``increase`` or ``decrease``. Default ``increase``.
        steps: Adam steps. Default 60.
        lr: Adam step size in pixel units. Default 0.01.
        l2: weight of the mean squared pixel change. Default 1.0.
        tv: weight of the total variation of the change. Default 0.1.

    Returns:
        `Explanation` whose ``pixel_map (H, W)`` is the per-pixel change magnitude (sum over channels of
        ``|x - x0|``, at the image's size); ``extras``: ``edited_image`` (PIL, model size, 8-bit),
        ``trajectory`` (score per step), ``score_edited`` (float score of the last float image),
        ``score_8bit`` (score of the saved 8-bit image, re-encoded), ``verified`` (the 8-bit image moved
        the score in the asked direction), ``l2_change`` (RMS pixel change).
    """
    if direction not in ("increase", "decrease"):
        raise InputError(f"direction must be increase or decrease, got {direction!r}")
    if steps < 1:
        raise InputError(f"steps must be at least 1, got {steps}")
    sign = 1.0 if direction == "increase" else -1.0
    cost = Cost()
    original = inputs.pixels.detach().clone()
    with model_guard(model):
        text_emb = text_embedding(model, inputs.tokens)
        x, trajectory = _edit_pixels(
            model, inputs, target, text_emb, original, sign=sign, steps=steps, lr=lr, l2=l2, tv=tv, cost=cost
        )
        saved = _rescore(model, inputs, target, text_emb, x)
        cost.forward += 2
    return _edit_explanation(model, inputs, target, direction, original, trajectory, saved, cost)


@dataclass(frozen=True)
class _Saved:
    """The edited image as it is saved (8 bits), and the score before and after saving."""

    image: Image.Image  # the 8-bit edited image, at the model's size
    pixels: torch.Tensor  # (1, 3, h, w) pixels re-encoded from it
    score_float: float  # score of the float pixels the descent ended on
    score_8bit: float  # score of the re-encoded 8-bit image


def _edit_explanation(
    model: ClipModel,
    inputs: PreparedInputs,
    target: Target,
    direction: str,
    original: torch.Tensor,
    trajectory: list[float],
    saved: _Saved,
    cost: Cost,
) -> Explanation:
    """The ``pixel-cf`` explanation: where the saved image differs from the original, and whether it moved
    the score as asked."""
    start_score = trajectory[0]
    trajectory.append(saved.score_float)
    difference = (saved.pixels - original).abs().sum(dim=1)[0].double().cpu().numpy()
    sign = 1.0 if direction == "increase" else -1.0
    return Explanation(
        method="pixel-cf",
        modality="image",
        score=start_score,
        pixel_map=upsample(difference, (inputs.image.height, inputs.image.width)),
        patch_map=pool_to_grid(difference, image_grid(model)),
        explains=target.describe(inputs.texts),
        forward_passes=cost.forward,
        backward_passes=cost.backward,
        seconds=cost.seconds,
        extras={
            "edited_image": saved.image,
            "trajectory": trajectory,
            "direction": direction,
            "score_edited": saved.score_float,
            "score_8bit": saved.score_8bit,
            "verified": bool(sign * (saved.score_8bit - start_score) > 0),
            "l2_change": float((saved.pixels - original).pow(2).mean().sqrt()),
        },
    )


def _edit_pixels(
    model: ClipModel,
    inputs: PreparedInputs,
    target: Target,
    text_emb: torch.Tensor,
    original: torch.Tensor,
    *,
    sign: float,
    steps: int,
    lr: float,
    l2: float,
    tv: float,
    cost: Cost,
) -> tuple[torch.Tensor, list[float]]:
    """Adam on the pixels for ``steps`` steps, clamped to ``[0, 1]`` after each; -> (the edited pixels, the
    score before each step). Each step is one forward and one backward pass (counted in ``cost``)."""
    x = original.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([x], lr=lr)
    trajectory: list[float] = []
    for _ in range(steps):
        score = target(model.image_features(inputs.codec.to_model(x)), text_emb)[0]
        change = x - original
        loss = -sign * score + l2 * change.pow(2).mean() + tv * total_variation(change)
        optimiser.zero_grad(set_to_none=True)
        (grad,) = torch.autograd.grad(loss, [x])
        x.grad = grad
        optimiser.step()
        with torch.no_grad():
            x.clamp_(0.0, 1.0)
        trajectory.append(float(score.detach()))
        cost.forward += 1
        cost.backward += 1
    return x, trajectory


def _rescore(
    model: ClipModel, inputs: PreparedInputs, target: Target, text_emb: torch.Tensor, x: torch.Tensor
) -> _Saved:
    """The edited pixels scored as they are and as the 8-bit image they save to (re-encoded from it)."""
    with torch.no_grad():
        final_float = float(target(image_embedding(model, inputs.codec, x.detach()), text_emb)[0])
        edited = pixels_to_pil(x.detach())
        reencoded = inputs.codec.pil_to_pixels(edited).to(model.device)
        final_8bit = float(target(image_embedding(model, inputs.codec, reencoded), text_emb)[0])
    return _Saved(edited, reencoded, final_float, final_8bit)


@dataclass(frozen=True)
class PixelCounterfactualOptions:
    """Options of the ``pixel-cf`` method."""

    direction: str = "increase"  # increase | decrease the score
    steps: int = 60  # Adam steps
    lr: float = 0.01  # Adam step size in pixel units
    l2: float = 1.0  # weight of the mean squared pixel change
    tv: float = 0.1  # weight of the total variation of the change


def _run(
    model: ClipModel,
    inputs: PreparedInputs,
    target: Target,
    modality: str,
    options: PixelCounterfactualOptions,
) -> Explanation:
    return pixel_counterfactual(
        model,
        inputs,
        target,
        direction=options.direction,
        steps=options.steps,
        lr=options.lr,
        l2=options.l2,
        tv=options.tv,
    )


def _figures(explanation: Explanation) -> dict[str, float]:
    """Whether the saved 8-bit image moved the score, by how much, and the RMS pixel change."""
    extras = explanation.extras
    return {
        "verified": float(extras["verified"]),
        "score_change_8bit": extras["score_8bit"] - explanation.score,
        "l2_change": extras["l2_change"],
    }


METHOD = Method(
    name="pixel-cf",
    description="pixel-space counterfactual: the image edited to move the score, staying close",
    modalities=("image",),
    options=PixelCounterfactualOptions,
    run=_run,
    attribution=False,
    evaluation_options={"steps": 30},
    cheap_options={"steps": 2},
    figures=_figures,
)
