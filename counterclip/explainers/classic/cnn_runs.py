"""The CNN flows behind ``counterclip explain-cnn``: maps for one or several classes (with the overlap of
their top regions), the Grad-CAM layer sweep, and the pixel-space counterfactual from class A to class B.

`run_cnn` takes a `CnnRequest` and returns a `CnnResult`; `counterclip.report.classic.write_cnn_result`
draws it. The CLI only parses arguments into the request and prints the result.

Examples::

    >>> model = load_cnn("resnet18", "r18.safetensors")
    >>> x, shown = preprocess_image(read_image("dog.jpg"), size=224)
    >>> names = load_class_names(None, num_outputs(model, x))
    >>> result = run_cnn(model, x, shown, CnnRequest(targets=(235, 208)), names)
    >>> result.overlap.shape
    (2, 2)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from counterclip.errors import InputError
from counterclip.explainers.base import Explanation
from counterclip.explainers.classic.cnn import (
    CNN_METHODS,
    black_baseline,
    explain_cnn,
    layer_sweep,
    overlap_matrix,
)
from counterclip.explainers.classic.cnn_counterfactual import pixel_counterfactual
from counterclip.explainers.classic.layers import default_sweep_layers, get_layer, scoped_eval

#: What ``explain-cnn --method`` takes: the attribution methods and the pixel counterfactual.
CNN_RUN_METHODS: tuple[str, ...] = (*CNN_METHODS, "counterfactual")
OVERLAP_FRACTION = 0.2  # the top share of each map compared between classes


@dataclass(frozen=True)
class CnnRequest:
    """What to compute for one image."""

    method: str = "gradcam"  # one of CNN_RUN_METHODS
    targets: tuple[int, ...] = ()  # class indices; several are compared side by side; () = the top-1 class
    layer: str | None = None  # Grad-CAM layer (named_modules name); None = the default layer
    sweep: tuple[str, ...] | None = None  # Grad-CAM at these layers instead (("auto",) = layer1..layer4)
    steps: int | None = None  # IG steps (default 50) or counterfactual steps (default 100)
    baseline: str = "mean"  # IG baseline: mean (the dataset-mean image) | black
    source: int | None = None  # counterfactual: class A (default: the top-1 class)
    proximity: float = 10.0  # counterfactual: weight of the proximity penalty


@dataclass
class CnnResult:
    """The explanations of one request, and how they relate.

    Attributes:
        flow: ``maps`` (one map per class), ``sweep`` (one Grad-CAM per layer) or ``counterfactual``.
        explanations: the explanations, in the order asked.
        overlap: ``(k, k)`` IoU of the classes' top-20% regions when several classes were compared.
    """

    flow: str
    explanations: list[Explanation]
    overlap: np.ndarray | None = None


def read_image(path: str | Path) -> Image.Image:
    """An image file as a loaded PIL image; a missing or unreadable file is an `InputError`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image {path} does not exist")
    try:
        picture = Image.open(path)
        picture.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"cannot read {path} as an image ({exc})") from exc
    return picture


def num_outputs(model: nn.Module, x: torch.Tensor) -> int:
    """Number of classes the model outputs for one input ``x (1, 3, H, W)``."""
    with scoped_eval(model), torch.no_grad():
        return int(model(x).shape[1])


def run_cnn(
    model: nn.Module, x: torch.Tensor, shown: Image.Image, request: CnnRequest, class_names: Sequence[str]
) -> CnnResult:
    """Run one `CnnRequest` on one image.

    Args:
        model: classifier, ``(N, 3, H, W) -> (N, n_classes)`` logits.
        x: the normalized image ``(1, 3, H, W)`` (from `preprocess_image`; left unchanged).
        shown: the RGB image ``x`` was made from (the counterfactual edits its pixels).
        request: what to compute.
        class_names: one name per output.

    Returns:
        `CnnResult`.
    """
    if request.method not in CNN_RUN_METHODS:
        raise InputError(f"unknown CNN method {request.method!r}; choose one of {', '.join(CNN_RUN_METHODS)}")
    if request.layer is not None:
        get_layer(model, request.layer)
    if request.method == "counterfactual":
        if len(request.targets) != 1:
            raise InputError("a CNN counterfactual needs exactly one target class (class B, --target)")
        result = pixel_counterfactual(
            model,
            shown,
            target_class=request.targets[0],
            source_class=request.source,
            steps=request.steps or 100,
            proximity=request.proximity,
            class_names=class_names,
        )
        return CnnResult("counterfactual", [result])
    target = request.targets[0] if request.targets else None
    if request.sweep is not None:
        layers = default_sweep_layers(model) if request.sweep == ("auto",) else list(request.sweep)
        return CnnResult("sweep", layer_sweep(model, x, layers, target, class_names))
    explanations = explain_cnn(
        model,
        x,
        request.method,
        list(request.targets) or None,
        request.layer,
        class_names,
        n_steps=request.steps or 50,
        ig_baseline=black_baseline(tuple(x.shape[-2:])) if request.baseline == "black" else None,
    )
    overlap = overlap_matrix(explanations, fraction=OVERLAP_FRACTION) if len(explanations) > 1 else None
    return CnnResult("maps", explanations, overlap)
