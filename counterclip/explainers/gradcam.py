"""Grad-CAM: Captum `LayerGradCam` for conv (ResNet) image towers, token-Grad-CAM for ViT towers.

Token-Grad-CAM takes the normalised tokens a transformer block feeds its attention (the output of the
block's first LayerNorm, ``(n, L, D)``; the block input when there is none), weights each channel by its
gradient averaged over the patch tokens, sums over channels, keeps the positive part, and reshapes the
patch tokens to the model's grid. This is pytorch-grad-cam's ViT recipe (``blocks[-1].norm1``). The
default block is the last one: its attention is the deepest place where patch tokens still reach the
class token (the outputs of the last block's patch tokens do not affect the embedding).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from counterclip.errors import InputError
from counterclip.explainers._core.attention import capture_block_input, capture_norm_output, first_norm
from counterclip.explainers._core.common import Cost, PreparedInputs, model_guard, text_embedding, upsample
from counterclip.explainers._core.targets import Target
from counterclip.explainers.base import Explanation
from counterclip.models.base import ClipModel


def list_layers(model: ClipModel) -> list[str]:
    """Candidate layer names for ``--layer``: transformer blocks (ViT) or conv stages and blocks (ResNet).

    Names are relative to the image tower (``model.module.visual`` for open_clip, ``vision_model`` for HF).
    """
    tower = _image_tower(model)
    blocks = {id(b) for b in model.vision_blocks()}
    if blocks:
        return [name for name, module in tower.named_modules() if id(module) in blocks]
    names = []
    for name, module in tower.named_modules():
        if (
            name
            and any(isinstance(c, nn.Conv2d) for c in module.modules())
            and not isinstance(module, nn.Conv2d)
        ):
            names.append(name)
    return names


def _image_tower(model: ClipModel) -> nn.Module:
    for attr in ("visual", "vision_model"):
        tower = getattr(model.module, attr, None)
        if isinstance(tower, nn.Module):
            return tower
    raise InputError(f"cannot find the image tower of {model!r}")


def default_layer(model: ClipModel) -> str:
    """The last transformer block (ViT) or the last conv stage (ResNet, e.g. ``layer4``)."""
    names = list_layers(model)
    if not names:
        raise InputError("the image tower has no transformer blocks or conv layers for Grad-CAM")
    if model.vision_blocks():
        return names[-1]
    stages = [n for n in names if "." not in n and n.startswith("layer")]
    return stages[-1] if stages else names[-1]


def _resolve_layer(model: ClipModel, layer: str | None) -> tuple[str, nn.Module]:
    name = layer or default_layer(model)
    modules = dict(_image_tower(model).named_modules())
    if name not in modules:
        candidates = ", ".join(list_layers(model)[-6:])
        raise InputError(
            f"no layer named {name!r} in the image tower (some candidates: {candidates}; see --list-layers)"
        )
    return name, modules[name]


def gradcam(
    model: ClipModel, inputs: PreparedInputs, target: Target, layer: str | None = None
) -> Explanation:
    """Grad-CAM map of the image for ``target``.

    Args:
        model: a CLIP model (ViT or ResNet image tower).
        inputs: from `prepare`.
        target: the score explained.
        layer: layer name from `list_layers` (default `default_layer`). For ViT towers the map is computed
            on that block's input.

    Returns:
        `Explanation` with ``pixel_map (H, W)`` at the image's size and ``patch_map (gh, gw)`` (the
        conv layer's cell grid for ResNet); ``extras['layer']``.
    """
    name, module = _resolve_layer(model, layer)
    cost = Cost()
    with model_guard(model):
        text_emb = text_embedding(model, inputs.tokens)
        if model.vision_blocks():
            cell_map, score = _token_gradcam(model, inputs, target, module, text_emb)
        else:
            cell_map, score = _conv_gradcam(model, inputs, target, module, text_emb)
    cost.forward, cost.backward = 1, 1
    return Explanation(
        method="gradcam",
        modality="image",
        score=score,
        pixel_map=upsample(cell_map, (inputs.image.height, inputs.image.width)),
        patch_map=cell_map,
        target=target.describe(inputs.texts),
        forward_passes=cost.forward,
        backward_passes=cost.backward,
        seconds=cost.seconds,
        extras={"layer": name},
    )


def _token_gradcam(
    model: ClipModel, inputs: PreparedInputs, target: Target, block: nn.Module, text_emb: torch.Tensor
) -> tuple[np.ndarray, float]:
    geometry = model.vision_geometry
    pixels = inputs.pixels.clone().requires_grad_(True)  # gives the graph a path even with frozen weights
    capture = capture_norm_output if first_norm(block) is not None else capture_block_input
    with capture(block) as store:
        score = target(model.image_features(inputs.codec.to_model(pixels)), text_emb)[0]
    hidden = store["x"]
    (grad,) = torch.autograd.grad(score, hidden)
    prefix = geometry.num_prefix_tokens
    acts, grads = hidden[0, prefix:].detach(), grad[0, prefix:]
    weights = grads.mean(dim=0)  # (D,) channel weights, averaged over patch tokens
    cam = torch.relu(acts @ weights)
    gh, gw = geometry.grid_size
    return cam.double().cpu().numpy().reshape(gh, gw), float(score.detach())


def _conv_gradcam(
    model: ClipModel, inputs: PreparedInputs, target: Target, layer: nn.Module, text_emb: torch.Tensor
) -> tuple[np.ndarray, float]:
    from captum.attr import LayerGradCam

    def forward(model_input: torch.Tensor) -> torch.Tensor:
        return target(model.image_features(model_input), text_emb)

    model_input = inputs.codec.to_model(inputs.pixels).clone().requires_grad_(True)
    attributions = LayerGradCam(forward, layer).attribute(model_input, relu_attributions=True)
    with torch.no_grad():
        score = float(forward(model_input)[0])
    return attributions[0, 0].detach().double().cpu().numpy(), score
