"""Pixel-space counterfactual for an image classifier: move the prediction from class A to class B.

Gradient descent on the image pixels (in ``[0, 1]``) minimises the cross-entropy towards class B plus a
proximity penalty ``proximity * mean((x - x0)^2)``. The edited image is rounded to 8 bits and classified
again: only that re-classification decides whether the counterfactual is valid ("verified"), since a
change that lives below one 8-bit level would vanish the moment the image is saved.

Examples::

    >>> x, shown = preprocess_image(Image.open("cat.jpg"))
    >>> cf = pixel_counterfactual(model, shown, target_class=207, steps=100)
    >>> cf.extras["verified"], cf.extras["edited_image"].size
    (True, (224, 224))
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from counterclip.errors import InputError
from counterclip.explainers.base import Explanation
from counterclip.explainers.classic.cnn_inputs import IMAGENET_MEAN, IMAGENET_STD
from counterclip.explainers.classic.layers import PassCounter, model_device, scoped_eval


def pixel_counterfactual(
    model: nn.Module,
    image: Image.Image | torch.Tensor,
    target_class: int,
    source_class: int | None = None,
    steps: int = 100,
    learning_rate: float = 0.01,
    proximity: float = 10.0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    class_names: Sequence[str] | None = None,
    stop_when_verified: bool = True,
) -> Explanation:
    """Edit ``image`` until the model predicts ``target_class``, staying close to the original.

    Args:
        model: classifier taking normalized ``(N, 3, H, W)`` images, returning ``(N, n_classes)`` logits.
        image: RGB PIL image (used at its own size), or pixels ``(1, 3, H, W)`` in ``[0, 1]`` (not modified).
        target_class: class B, the prediction to reach.
        source_class: class A whose probability is tracked. Default: the original top-1 class.
        steps: maximum number of Adam steps.
        learning_rate: Adam step size in pixel units (``[0, 1]`` scale).
        proximity: weight of the mean squared pixel change in the loss.
        mean, std: the model's input normalization (ImageNet's by default).
        class_names: names for the description; default ``class i``.
        stop_when_verified: stop at the first step whose 8-bit-rounded image is classified as B.

    Returns:
        An `Explanation` with ``method="pixel-cf"``, ``score`` the original probability of B,
        ``pixel_map`` ``(H, W)`` the absolute change of the 8-bit edited image summed over channels (in
        ``[0, 1]`` units per channel). ``extras``: ``verified``, ``source_class``/``target_class`` (+ names),
        ``trajectory`` (per step: ``p_source``, ``p_target``), ``final_probabilities`` of A and B for the
        8-bit image, ``steps_taken``, ``l2`` and ``linf_levels`` (largest change in 8-bit levels), and
        ``edited_image`` (PIL, left out of JSON).
    """
    started = time.perf_counter()
    device = model_device(model)
    original = _as_pixels(image).to(device)
    classify = _normalized_classifier(model, mean, std, original)
    with scoped_eval(model), PassCounter(model) as passes:
        start = _probabilities(classify, original)
        source = _source_class(start, target_class, source_class)
        edit = _descend(
            classify,
            original,
            source,
            target_class,
            steps=steps,
            learning_rate=learning_rate,
            proximity=proximity,
            stop_when_verified=stop_when_verified,
        )
        final = _probabilities(classify, edit.quantized)
    return _counterfactual_explanation(
        original.cpu(), edit, start, final, (source, target_class), class_names, passes, started
    )


@dataclass(frozen=True)
class _Edit:
    """Where the descent ended: the edited pixels rounded to 8 bits, and how it got there."""

    quantized: torch.Tensor  # (1, 3, H, W) in [0, 1], on 8-bit levels
    steps_taken: int  # Adam steps taken
    trajectory: dict[str, list[float]]  # per step: p_source, p_target


def _normalized_classifier(
    model: nn.Module, mean: Sequence[float], std: Sequence[float], like: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Pixels ``(N, 3, H, W)`` in ``[0, 1]`` -> the model's logits (normalized on the way in)."""
    mean_t = torch.tensor(mean, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)

    def classify(pixels: torch.Tensor) -> torch.Tensor:
        return model((pixels - mean_t) / std_t)

    return classify


def _probabilities(classify: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor) -> torch.Tensor:
    """Class probabilities ``(n_classes,)`` of one image (no gradient)."""
    with torch.no_grad():
        return torch.softmax(classify(pixels), dim=1)[0]


def _source_class(start: torch.Tensor, target_class: int, source_class: int | None) -> int:
    """Class A (the original top-1 unless given); a target or source out of the model's range is refused."""
    n_classes = start.shape[0]
    if not 0 <= target_class < n_classes:
        raise InputError(f"target class {target_class} is out of range: the model has {n_classes} classes")
    source = int(start.argmax()) if source_class is None else int(source_class)
    if not 0 <= source < n_classes:
        raise InputError(f"source class {source} is out of range: the model has {n_classes} classes")
    return source


def _descend(
    classify: Callable[[torch.Tensor], torch.Tensor],
    original: torch.Tensor,
    source: int,
    target_class: int,
    *,
    steps: int,
    learning_rate: float,
    proximity: float,
    stop_when_verified: bool,
) -> _Edit:
    """Adam on a change of the pixels: cross-entropy towards the target plus the proximity penalty, until
    the 8-bit image is classified as the target (with ``stop_when_verified``) or the steps run out."""
    # Parameterise the change, not the image, so the original tensor is never touched.
    change = torch.zeros_like(original, requires_grad=True)
    optimizer = torch.optim.Adam([change], lr=learning_rate)
    goal = torch.tensor([target_class], device=original.device)
    trajectory: dict[str, list[float]] = {"p_source": [], "p_target": []}
    steps_taken = 0
    for _ in range(steps):
        edited = (original + change).clamp(0.0, 1.0)
        logits = classify(edited)
        probabilities = torch.softmax(logits.detach(), dim=1)[0]
        trajectory["p_source"].append(float(probabilities[source]))
        trajectory["p_target"].append(float(probabilities[target_class]))
        if stop_when_verified and int(probabilities.argmax()) == target_class:
            quantized = _quantize(edited.detach())
            with torch.no_grad():
                if int(classify(quantized).argmax()) == target_class:
                    return _Edit(quantized, steps_taken, trajectory)
        loss = nn.functional.cross_entropy(logits, goal) + proximity * (edited - original).pow(2).mean()
        # Gradient for the change only: no weight gradients computed, and the caller's .grad fields untouched.
        (change.grad,) = torch.autograd.grad(loss, [change])
        optimizer.step()
        steps_taken += 1
    return _Edit(_quantize((original + change.detach()).clamp(0.0, 1.0)), steps_taken, trajectory)


def _counterfactual_explanation(
    original: torch.Tensor,
    edit: _Edit,
    start: torch.Tensor,
    final: torch.Tensor,
    classes: tuple[int, int],
    class_names: Sequence[str] | None,
    passes: PassCounter,
    started: float,
) -> Explanation:
    """The ``pixel-cf`` explanation: the change of the 8-bit edit as the map, the probabilities of A and B
    (``classes``) before and after, and the edited image."""
    source, target_class = classes
    names = list(class_names) if class_names is not None else [f"class {i}" for i in range(start.shape[0])]
    quantized = edit.quantized.cpu()
    difference = (quantized - original).abs()[0]
    edited_image = Image.fromarray(
        (quantized[0].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8), mode="RGB"
    )
    return Explanation(
        method="pixel-cf",
        modality="image",
        score=float(start[target_class]),
        pixel_map=difference.sum(dim=0).numpy(),
        explains=f"probability of {names[target_class]!r} (class {target_class}) rather than {names[source]!r}",
        forward_passes=passes.forward,
        backward_passes=passes.backward,
        seconds=time.perf_counter() - started,
        extras={
            "verified": int(final.argmax()) == target_class,
            "source_class": source,
            "source_name": names[source],
            "target_class": int(target_class),
            "target_name": names[target_class],
            "trajectory": edit.trajectory,
            "start_probabilities": {"source": float(start[source]), "target": float(start[target_class])},
            "final_probabilities": {"source": float(final[source]), "target": float(final[target_class])},
            "final_top1": int(final.argmax()),
            "steps_taken": edit.steps_taken,
            "l2": float((quantized - original).norm()),
            "linf_levels": int(round(float(difference.max()) * 255)),
            "edited_image": edited_image,
        },
    )


def _as_pixels(image: Image.Image | torch.Tensor) -> torch.Tensor:
    """``(1, 3, H, W)`` float pixels in ``[0, 1]`` (a copy; 8-bit exact for PIL input)."""
    if isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()
    if image.dim() != 4 or image.shape[:2] != (1, 3):
        raise InputError(f"expected pixels of shape (1, 3, H, W), got {tuple(image.shape)}")
    return image.detach().float().clamp(0.0, 1.0).clone()


def _quantize(pixels: torch.Tensor) -> torch.Tensor:
    """Round to the nearest 8-bit level, as saving the image as PNG would."""
    return (pixels * 255.0).round() / 255.0
