"""Attribution maps for CNN image classifiers (Captum): Grad-CAM, guided backprop, guided Grad-CAM,
saliency, integrated gradients and LRP, for one or several target classes, and the layer sweep.

Any ``nn.Module`` mapping ``(N, 3, H, W)`` normalized images to ``(N, n_classes)`` logits works. The
model's ``training``/``inplace`` flags are restored after every call, hooks never outlive a call, and the
input tensor is never modified. Loading the model and preparing its inputs live in
`counterclip.explainers.classic.cnn_inputs` (its names stay importable from here).

Examples::

    >>> model = load_cnn("resnet18", weights="resnet18.safetensors")
    >>> x, shown = preprocess_image(Image.open("dog.jpg"), size=224)
    >>> [gradcam] = explain_cnn(model, x, method="gradcam", targets=[235], layer="layer4")
    >>> gradcam.pixel_map.shape
    (224, 224)
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from counterclip.errors import InputError
from counterclip.explainers.base import Explanation
from counterclip.explainers.classic.cnn_inputs import (  # noqa: F401 - re-exported
    IMAGENET_MEAN,
    IMAGENET_STD,
    black_baseline,
    load_class_names,
    load_cnn,
    preprocess_image,
    resolve_targets,
)
from counterclip.explainers.classic.layers import (
    PassCounter,
    default_layer,
    get_layer,
    model_device,
    scoped_eval,
)

CNN_METHODS = ("gradcam", "guided-backprop", "guided-gradcam", "saliency", "ig", "lrp")

# Blocks that add a skip connection with a functional `+`: LRP (Captum) sees only the two branches' leaf
# modules and would silently misdistribute relevance, so they are refused by name instead.
_RESIDUAL_BLOCKS = {
    "BasicBlock",
    "Bottleneck",
    "InvertedResidual",
    "CNBlock",
    "MBConv",
    "FusedMBConv",
    "ResBottleneckBlock",
    "EncoderBlock",
}


def explain_cnn(
    model: nn.Module,
    x: torch.Tensor,
    method: str = "gradcam",
    targets: Sequence[int] | None = None,
    layer: str | None = None,
    class_names: Sequence[str] | None = None,
    n_steps: int = 50,
    internal_batch_size: int | None = 16,
    ig_baseline: torch.Tensor | None = None,
) -> list[Explanation]:
    """One attribution map per target class for one image.

    Args:
        model: classifier, ``(N, 3, H, W) -> (N, n_classes)`` logits.
        x: the normalized image, ``(1, 3, H, W)`` (left unchanged).
        method: one of `CNN_METHODS`.
        targets: class indices; several give side-by-side maps (computed as one batch). Default: top-1.
        layer: Grad-CAM / guided Grad-CAM layer name (``named_modules()``). Default: `default_layer`.
        class_names: names for the ``target`` descriptions. Default: ``class i``.
        n_steps: integration steps for ``ig``.
        internal_batch_size: IG examples per forward pass (memory bound).
        ig_baseline: IG baseline ``(1, 3, H, W)`` in the model's input space. Default: all zeros, which
            after ImageNet normalization is the dataset-mean image (see `black_baseline` for black).

    Returns:
        One `Explanation` per target, ``pixel_map`` ``(H, W)``; Grad-CAM also sets ``patch_map``
        ``(h, w)`` at the layer's resolution. ``score`` is the target's logit; ``extras`` holds the class
        index and probability, the layer, and the method's convergence delta where it has one. Forward and
        backward passes count examples through the model for the attribution (the scoring pass excluded).
    """
    if method not in CNN_METHODS:
        raise InputError(f"unknown CNN method {method!r}; choose one of {', '.join(CNN_METHODS)}")
    if x.dim() != 4 or x.shape[0] != 1:
        raise InputError(f"expected one image of shape (1, C, H, W), got {tuple(x.shape)}")
    started = time.perf_counter()
    # A copy on the model's device: the caller's tensor is never touched.
    x = x.detach().to(model_device(model)).clone()
    with scoped_eval(model), torch.no_grad():
        logits = model(x)
    target_list = _target_classes(logits, targets)
    batch = x.expand(len(target_list), *x.shape[1:]).clone().requires_grad_(True)
    layer_name = (layer if layer is not None else default_layer(model)) if "gradcam" in method else None
    if method == "lrp":
        check_lrp_support(model)
    options = _Options(
        layer=layer_name, n_steps=n_steps, internal_batch_size=internal_batch_size, baseline=ig_baseline
    )
    result, passes = _attribute_counted(model, method, batch, target_list, options)
    return _class_explanations(
        method=method,
        logits=logits,
        targets=target_list,
        class_names=class_names,
        result=result,
        passes=passes,
        seconds=time.perf_counter() - started,
        layer_name=layer_name,
    )


def _class_explanations(
    *,
    method: str,
    logits: torch.Tensor,
    targets: list[int],
    class_names: Sequence[str] | None,
    result: _AttributionResult,
    passes: PassCounter,
    seconds: float,
    layer_name: str | None,
) -> list[Explanation]:
    """One `Explanation` per target class from the batch's maps; the passes and time are shared out."""
    maps, cells, delta = result
    probabilities = torch.softmax(logits, dim=1)[0]
    names = list(class_names) if class_names is not None else [f"class {i}" for i in range(logits.shape[1])]
    k = len(targets)
    return [
        Explanation(
            method=method,
            modality="image",
            score=float(logits[0, target]),
            pixel_map=maps[row],
            patch_map=cells[row] if cells is not None else None,
            explains=f"logit of {names[target]!r} (class {target})",
            forward_passes=passes.forward // k,
            backward_passes=passes.backward // k,
            seconds=seconds / k,
            extras={
                **({"layer": layer_name} if layer_name is not None else {}),
                "class_index": target,
                "class_name": names[target],
                "probability": float(probabilities[target]),
                **({"convergence_delta": float(delta[row])} if delta is not None else {}),
            },
        )
        for row, target in enumerate(targets)
    ]


def _target_classes(logits: torch.Tensor, targets: Sequence[int] | None) -> list[int]:
    """The classes to explain: ``targets``, or the top-1 class; one out of the model's range is refused."""
    n_classes = logits.shape[1]
    target_list = [int(logits[0].argmax())] if not targets else [int(t) for t in targets]
    for target in target_list:
        if not 0 <= target < n_classes:
            raise InputError(f"target class {target} is out of range: the model has {n_classes} classes")
    return target_list


def _attribute_counted(
    model: nn.Module, method: str, batch: torch.Tensor, targets: list[int], options: _Options
) -> tuple[_AttributionResult, PassCounter]:
    """The method's maps of ``batch`` (one row per target) and the passes they took through the model."""
    # In-place activations off for every method: a following in-place ReLU would overwrite the hooked layer
    # output Grad-CAM reads, and autograd refuses the backward hooks of guided backprop and LRP on them.
    with scoped_eval(model, disable_inplace=True):
        with PassCounter(model) as passes, warnings.catch_warnings():
            # Captum announces the ReLU hooks it sets (and removes) on every guided-backprop call.
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU", category=UserWarning)
            return _ATTRIBUTE[method](model, batch, targets, options), passes


def layer_sweep(
    model: nn.Module,
    x: torch.Tensor,
    layers: Sequence[str],
    target: int | None = None,
    class_names: Sequence[str] | None = None,
) -> list[Explanation]:
    """Grad-CAM of one image and one class at each of ``layers`` (e.g. ``layer1..layer4``)."""
    for name in layers:
        get_layer(model, name)
    return [
        explain_cnn(model, x, "gradcam", None if target is None else [target], name, class_names)[0]
        for name in layers
    ]


def top_region_mask(values: np.ndarray, fraction: float = 0.2) -> np.ndarray:
    """Boolean mask of the ``fraction`` highest pixels of a map (ties broken by position).

    Pixels at the map's minimum never count as "top": Grad-CAM clips to zero, and a flat zero area
    carries no evidence, so a map that is zero almost everywhere gives a small (or empty) region.
    """
    flat = np.asarray(values, dtype=np.float64).ravel()
    count = max(1, math.ceil(fraction * flat.size))
    mask = np.zeros(flat.size, dtype=bool)
    mask[np.argsort(-flat, kind="stable")[:count]] = True
    mask &= flat > flat.min()
    return mask.reshape(np.shape(values))


def top_region_iou(map_a: np.ndarray, map_b: np.ndarray, fraction: float = 0.2) -> float:
    """IoU of the top-``fraction`` regions (`top_region_mask`) of two maps of the same shape; 0 if both empty."""
    if map_a.shape != map_b.shape:
        raise InputError(f"maps differ in shape: {map_a.shape} vs {map_b.shape}")
    top_a, top_b = top_region_mask(map_a, fraction), top_region_mask(map_b, fraction)
    union = int((top_a | top_b).sum())
    return int((top_a & top_b).sum()) / union if union else 0.0


def overlap_matrix(explanations: Sequence[Explanation], fraction: float = 0.2) -> np.ndarray:
    """``(k, k)`` top-``fraction`` IoU between the pixel maps of ``k`` explanations."""
    k = len(explanations)
    matrix = np.ones((k, k))
    for i in range(k):
        for j in range(i + 1, k):
            value = top_region_iou(explanations[i].pixel_map, explanations[j].pixel_map, fraction)
            matrix[i, j] = matrix[j, i] = value
    return matrix


def check_lrp_support(model: nn.Module) -> None:
    """Raise `InputError` naming the first module LRP (Captum) cannot propagate relevance through."""
    from captum.attr._core.lrp import SUPPORTED_LAYERS_WITH_RULES, SUPPORTED_NON_LINEAR_LAYERS

    supported = set(SUPPORTED_LAYERS_WITH_RULES) | set(SUPPORTED_NON_LINEAR_LAYERS)
    for name, module in model.named_modules():
        kind = type(module).__name__
        if kind in _RESIDUAL_BLOCKS:
            raise InputError(
                f"LRP does not support {kind} (layer {name!r}): its skip connection adds tensors outside any "
                "module; use gradcam, ig or saliency, or an architecture without residual blocks (vgg, alexnet)"
            )
        if not list(module.children()) and type(module) not in supported:
            raise InputError(
                f"LRP does not support layer type {kind} (layer {name!r}); supported: "
                + ", ".join(sorted(t.__name__ for t in supported))
            )


@dataclass(frozen=True)
class _Options:
    """Per-call settings of the attribution functions."""

    layer: str | None  # Grad-CAM layer name (gradcam, guided-gradcam)
    n_steps: int  # integration steps (ig)
    internal_batch_size: int | None  # examples per forward pass (ig)
    baseline: torch.Tensor | None  # (1, 3, H, W) IG baseline in input space; None = zeros


# Each attribution function maps (model, batch (k,3,H,W), targets, options) to
# (pixel maps (k,H,W), cell maps (k,h,w) or None, convergence delta (k,) or None).
_AttributionResult = tuple[np.ndarray, np.ndarray | None, np.ndarray | None]


def _gradcam(
    model: nn.Module, batch: torch.Tensor, targets: list[int], options: _Options
) -> _AttributionResult:
    from captum.attr import LayerAttribution, LayerGradCam

    module = get_layer(model, options.layer)
    cam = LayerGradCam(model, module).attribute(batch, target=targets, relu_attributions=True)
    if cam.dim() != 4:
        raise InputError(
            f"layer {options.layer!r} gives a {cam.dim()}-D output; Grad-CAM needs a (N, C, h, w) feature map"
        )
    upsampled = LayerAttribution.interpolate(cam, tuple(batch.shape[-2:]), interpolate_mode="bilinear")
    return _np(upsampled[:, 0]), _np(cam[:, 0]), None


def _guided_backprop(
    model: nn.Module, batch: torch.Tensor, targets: list[int], options: _Options
) -> _AttributionResult:
    from captum.attr import GuidedBackprop

    attributions = GuidedBackprop(model).attribute(batch, target=targets)
    return _np(attributions.abs().sum(dim=1)), None, None


def _guided_gradcam(
    model: nn.Module, batch: torch.Tensor, targets: list[int], options: _Options
) -> _AttributionResult:
    from captum.attr import GuidedGradCam

    attributions = GuidedGradCam(model, get_layer(model, options.layer)).attribute(batch, target=targets)
    return _np(attributions.abs().sum(dim=1)), None, None


def _saliency(
    model: nn.Module, batch: torch.Tensor, targets: list[int], options: _Options
) -> _AttributionResult:
    from captum.attr import Saliency

    attributions = Saliency(model).attribute(batch, target=targets, abs=True)
    return _np(attributions.max(dim=1).values), None, None


def _integrated_gradients(
    model: nn.Module, batch: torch.Tensor, targets: list[int], options: _Options
) -> _AttributionResult:
    from captum.attr import IntegratedGradients

    # Default baseline: the all-zero normalized input (the dataset-mean image), Captum's default.
    baselines = None
    if options.baseline is not None:
        if tuple(options.baseline.shape) != (1, *batch.shape[1:]):
            raise InputError(
                f"IG baseline shape {tuple(options.baseline.shape)} != input shape {(1, *batch.shape[1:])}"
            )
        baselines = options.baseline.detach().to(batch.device).expand_as(batch).clone()
    attributions, delta = IntegratedGradients(model).attribute(
        batch,
        baselines=baselines,
        target=targets,
        n_steps=options.n_steps,
        internal_batch_size=options.internal_batch_size,
        return_convergence_delta=True,
    )
    return _np(attributions.sum(dim=1)), None, _np(delta)


def _lrp(model: nn.Module, batch: torch.Tensor, targets: list[int], options: _Options) -> _AttributionResult:
    from captum.attr import LRP

    attributions, delta = LRP(model).attribute(batch, target=targets, return_convergence_delta=True)
    return _np(attributions.sum(dim=1)), None, _np(delta)


_ATTRIBUTE: dict[str, Callable[..., _AttributionResult]] = {
    "gradcam": _gradcam,
    "guided-backprop": _guided_backprop,
    "guided-gradcam": _guided_gradcam,
    "saliency": _saliency,
    "ig": _integrated_gradients,
    "lrp": _lrp,
}


def _np(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().float().numpy()
