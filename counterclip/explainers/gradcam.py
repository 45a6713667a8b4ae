"""Grad-CAM family: Captum `LayerGradCam` for conv (ResNet) image towers, token-CAMs for ViT towers.

Two rules, both on a layer's activations ``A`` and the score's gradient ``G`` over the same cells:

- ``gradcam`` (Selvaraju et al.): channel weights are ``G`` averaged over the cells, the map is
  ``relu(sum_c w_c A_c)``;
- ``hirescam`` (Draelos & Carin 2020): the element-wise product summed over channels, ``relu(sum_c G_c A_c)``.

On ViT towers the cells are the patch tokens a block feeds its attention (the output of the block's first
LayerNorm; the block input when there is none). Averaging the gradient over tokens assumes a channel means
the same thing at every position, which holds for conv features but not for tokens; with the bundled shapes
model the classic rule on the last block gave a pointing game of 0.62, HiResCAM on the last block 0.82, and
HiResCAM summed over the blocks' per-block positive parts 1.00 (last two blocks 1.00, all four 1.00 with the
better deletion curve; 50 images, ``counterclip eval explainers``). So ViT towers default to ``hirescam`` over
all blocks (like the relevance maps, ``blocks`` picks them); conv towers default to classic Grad-CAM on the
last stage. ``layer`` picks one named block or conv layer instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from counterclip.errors import InputError
from counterclip.explainers._core.common import (
    Cost,
    PreparedInputs,
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


def list_layers(model: ClipModel) -> list[str]:
    """Candidate layer names for ``--layer``: transformer blocks (ViT) or conv stages and blocks (ResNet).

    Names are relative to the image tower (``model.module.visual`` for open_clip, ``vision_model`` for HF).
    """
    return model.image_tower().layer_names()


def default_layer(model: ClipModel) -> str:
    """The last transformer block (ViT) or the last conv stage (ResNet, e.g. ``layer4``)."""
    name = model.image_tower().default_layer()
    if name is None:
        raise InputError("the image tower has no transformer blocks or conv layers for Grad-CAM")
    return name


RULES: tuple[str, ...] = ("gradcam", "hirescam")


def gradcam(
    model: ClipModel,
    inputs: PreparedInputs,
    target: Target,
    layer: str | None = None,
    blocks: int | Sequence[int] | None = None,
    rule: str | None = None,
) -> Explanation:
    """Grad-CAM-family map of the image for ``target``.

    Args:
        model: a CLIP model (ViT or ResNet image tower).
        inputs: from `prepare`.
        target: the score explained.
        layer: one layer name from `list_layers` (a transformer block or a conv layer).
        blocks: ViT towers, instead of ``layer``: None = all blocks (default), k = the last k, or indices;
            the per-block maps are summed.
        rule: ``hirescam`` (default for ViT towers) or ``gradcam`` (default for conv towers).

    Returns:
        `Explanation` with ``pixel_map (H, W)`` at the image's size and ``patch_map`` (the patch grid for ViT,
        the conv layer's cell grid for ResNet); ``extras['layer']`` (names joined by ``+`` when several)
        and ``extras['rule']``.
    """
    tower = model.image_tower()
    vit = bool(tower.blocks)
    rule = rule or ("hirescam" if vit else "gradcam")
    if rule not in RULES:
        raise InputError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    chosen, indices, conv_layer = _chosen_layers(model, tower, layer, blocks)
    cost = Cost()
    with model_guard(model):
        text_emb = text_embedding(model, inputs.tokens)
        if vit:
            cell_map, score = _token_cam(model, inputs, target, tower, indices, text_emb, rule)
        else:
            cell_map, score = _conv_cam(model, inputs, target, conv_layer, text_emb, rule)
    cost.forward, cost.backward = 1, 1
    return Explanation(
        method="gradcam",
        modality="image",
        score=score,
        pixel_map=upsample(cell_map, (inputs.image.height, inputs.image.width)),
        patch_map=cell_map,
        explains=target.describe(inputs.texts),
        forward_passes=cost.forward,
        backward_passes=cost.backward,
        seconds=cost.seconds,
        extras={"layer": "+".join(chosen), "rule": rule},
    )


def _chosen_layers(
    model: ClipModel, tower: TowerInternals, layer: str | None, blocks: int | Sequence[int] | None
) -> tuple[list[str], list[int], nn.Module | None]:
    """The layers the map is read at: their names, their block indices (ViT towers) and the layer module
    (a named layer); refuses a layer and blocks together, and blocks on a conv tower."""
    if layer is not None and blocks is not None:
        raise InputError("give either a layer name or blocks, not both")
    vit = bool(tower.blocks)
    names = tower.layer_names()
    if vit and layer is None:
        indices = select_blocks(len(tower.blocks), blocks)
        return [names[i] for i in indices], indices, None
    if blocks is not None:
        raise InputError("blocks applies to ViT towers; pick a conv layer with layer= (see --list-layers)")
    chosen = [layer or default_layer(model)]
    module = tower.layer(chosen[0])  # an unknown name raises, listing candidates
    return chosen, ([names.index(chosen[0])] if vit else []), module


def _token_cam(
    model: ClipModel,
    inputs: PreparedInputs,
    target: Target,
    tower: TowerInternals,
    indices: Sequence[int],
    text_emb: torch.Tensor,
    rule: str,
) -> tuple[np.ndarray, float]:
    """Sum over blocks ``indices`` of each block's positive token map (one forward and one backward pass)."""
    pixels = inputs.pixels.clone().requires_grad_(True)  # gives the graph a path even with frozen weights
    with tower.capture_attention_inputs(indices) as stores:
        score = target(model.image_features(inputs.codec.to_model(pixels)), text_emb)[0]
    hidden = [store["x"] for store in stores]
    grads = torch.autograd.grad(score, hidden)
    prefix = tower.prefix_tokens
    cam = torch.zeros(hidden[0].shape[1] - prefix, dtype=torch.float64)
    for states, grad in zip(hidden, grads, strict=True):
        acts, grad = states[0, prefix:].detach().double(), grad[0, prefix:].double()
        if rule == "gradcam":
            contribution = acts @ grad.mean(dim=0)  # (D,) channel weights, averaged over patch tokens
        else:
            contribution = (acts * grad).sum(dim=-1)
        cam += torch.relu(contribution).cpu()
    gh, gw = tower.grid
    return cam.numpy().reshape(gh, gw), float(score.detach())


def _conv_cam(
    model: ClipModel,
    inputs: PreparedInputs,
    target: Target,
    layer: nn.Module,
    text_emb: torch.Tensor,
    rule: str,
) -> tuple[np.ndarray, float]:
    from captum.attr import LayerGradCam, LayerGradientXActivation

    def forward(model_input: torch.Tensor) -> torch.Tensor:
        return target(model.image_features(model_input), text_emb)

    model_input = inputs.codec.to_model(inputs.pixels).clone().requires_grad_(True)
    if rule == "gradcam":
        attributions = LayerGradCam(forward, layer).attribute(model_input, relu_attributions=True)[0, 0]
    else:
        products = LayerGradientXActivation(forward, layer).attribute(model_input)
        attributions = torch.relu(products[0].sum(dim=0))
    with torch.no_grad():
        score = float(forward(model_input)[0])
    return attributions.detach().double().cpu().numpy(), score


@dataclass(frozen=True)
class GradcamOptions:
    """Options of the ``gradcam`` method."""

    layer: str | None = None  # one layer from list_layers; None: the blocks (ViT) or the last stage (conv)
    blocks: int | tuple[int, ...] | None = None  # ViT: None = all blocks, k = the last k, or indices
    rule: str | None = None  # hirescam | gradcam; None: hirescam for ViT towers, gradcam for conv towers


def _run(
    model: ClipModel, inputs: PreparedInputs, target: Target, modality: str, options: GradcamOptions
) -> Explanation:
    return gradcam(model, inputs, target, layer=options.layer, blocks=options.blocks, rule=options.rule)


METHOD = Method(
    name="gradcam",
    description="HiResCAM over the ViT blocks' tokens, or Grad-CAM on a conv stage (Captum)",
    modalities=("image",),
    options=GradcamOptions,
    run=_run,
)
