"""Layers of a CNN by name, their output shapes, and scoping of the model's state for one explanation."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from counterclip.errors import InputError


@dataclass(frozen=True)
class LayerInfo:
    """One module of a model as `named_modules()` names it."""

    name: str  # dotted name from named_modules(), e.g. "layer4.1.conv2"
    type: str  # class name of the module, e.g. "Conv2d"
    output_shape: (
        tuple[int, ...] | None
    )  # shape of its (first) output for the probe input; None if never called
    calls: int  # how many times forward ran it for one input (a shared ReLU runs several times)


def list_layers(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 224, 224)) -> list[LayerInfo]:
    """Every named submodule of ``model`` with the shape of its output for one zero input.

    Args:
        model: any ``nn.Module`` taking one image tensor.
        input_shape: shape of the probe input ``(1, C, H, W)``. Default ``(1, 3, 224, 224)``.

    Returns:
        One `LayerInfo` per entry of ``model.named_modules()`` except the root, in the same order. For a
        module run several times per forward pass, ``output_shape`` is its first output's shape.
    """
    shapes: dict[str, tuple[int, ...] | None] = {}
    calls: dict[str, int] = {}
    handles = []
    named = [(name, module) for name, module in model.named_modules() if name]

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: tuple, output: object) -> None:
            calls[name] = calls.get(name, 0) + 1
            if name not in shapes:
                shapes[name] = _first_shape(output)

        return hook

    device = model_device(model)
    try:
        for name, module in named:
            handles.append(module.register_forward_hook(make_hook(name)))
        with scoped_eval(model), torch.no_grad():
            model(torch.zeros(input_shape, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return [
        LayerInfo(name, type(module).__name__, shapes.get(name), calls.get(name, 0)) for name, module in named
    ]


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``; an `InputError` naming close matches when there is none."""
    modules = dict(model.named_modules())
    if name and name in modules:
        return modules[name]
    close = difflib.get_close_matches(name, [n for n in modules if n], n=5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise InputError(
        f"unknown layer name {name!r} for {type(model).__name__}.{hint} Use --list-layers to see all."
    )


def default_layer(model: nn.Module) -> str:
    """The usual Grad-CAM layer: ``layer4`` on ResNets, otherwise the last ``Conv2d``."""
    names = dict(model.named_modules())
    if "layer4" in names:
        return "layer4"
    convs = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    if not convs:
        raise InputError(f"{type(model).__name__} has no Conv2d layer; pass a layer name with --layer")
    return convs[-1]


def default_sweep_layers(model: nn.Module) -> list[str]:
    """Layers for a sweep: ``layer1..layer4`` on ResNets, otherwise up to the last four ``Conv2d``."""
    names = dict(model.named_modules())
    stages = [f"layer{i}" for i in range(1, 5) if f"layer{i}" in names]
    if stages:
        return stages
    return [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)][-4:]


@contextmanager
def scoped_eval(model: nn.Module, disable_inplace: bool = False) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode (and optionally make in-place activations out-of-place) for one call.

    Every module's ``training`` flag and ``inplace`` flag is restored on exit, even on error, so the
    caller's model leaves an explanation exactly as it came in. In-place ReLUs must be switched off for
    methods that hook activation gradients (guided backprop, LRP): autograd refuses backward hooks on
    tensors modified in place.
    """
    modes = [(module, module.training) for module in model.modules()]
    inplace = [
        module for module in model.modules() if disable_inplace and getattr(module, "inplace", False) is True
    ]
    try:
        model.eval()
        for module in inplace:
            module.inplace = False
        yield model
    finally:
        for module, training in modes:
            module.training = training
        for module in inplace:
            module.inplace = True


class PassCounter:
    """Count forward and backward passes (in examples) through a model, for one scoped call.

    A forward hook adds the batch size of each call; a tensor hook on the output adds it again when a
    gradient flows back through that output. Use as ``with PassCounter(model) as passes: ...``.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.forward = 0
        self.backward = 0
        self._handle = None

    def __enter__(self) -> PassCounter:
        self._handle = self.model.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, module: nn.Module, inputs: tuple, output: object) -> None:
        tensor = _first_tensor(output)
        if tensor is None:
            return
        batch = int(tensor.shape[0]) if tensor.dim() else 1
        self.forward += batch
        if tensor.requires_grad:
            tensor.register_hook(lambda grad: self._add_backward(batch))

    def _add_backward(self, batch: int) -> None:
        self.backward += batch


def _first_tensor(output: object) -> torch.Tensor | None:
    """The first tensor in a module output (tensor, tuple/list, or a Hugging Face ModelOutput)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for item in output:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _first_shape(output: object) -> tuple[int, ...] | None:
    tensor = _first_tensor(output)
    return tuple(tensor.shape) if tensor is not None else None


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameter-free model)."""
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")
