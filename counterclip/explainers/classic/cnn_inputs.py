"""A CNN image classifier and its inputs: a torchvision architecture with weights from a local file, its
class names, the image preprocessed as it expects, a black baseline and the target classes by name.

Examples::

    >>> model = load_cnn("resnet18", weights="resnet18.safetensors")
    >>> x, shown = preprocess_image(Image.open("dog.jpg"), size=224)
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from counterclip.errors import InputError, ModelLoadError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_class_names(path: str | Path | None = None, num_classes: int = 1000) -> list[str]:
    """Class names, one per line, from ``path``; ImageNet's 1000 names when ``path`` is None.

    Args:
        path: a labels file (UTF-8, one name per line, blank lines ignored), or None.
        num_classes: the model's number of outputs. Without a labels file and with a number other than
            1000, the names are ``class 0 .. class n-1``.

    Returns:
        ``num_classes`` names.
    """
    if path is None:
        if num_classes != 1000:
            return [f"class {i}" for i in range(num_classes)]
        text = resources.files("counterclip").joinpath("data/imagenet_classes.txt").read_text("utf-8")
    else:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"labels file {path} does not exist")
        text = path.read_text("utf-8")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != num_classes:
        raise InputError(
            f"labels file {path} has {len(names)} names but the model has {num_classes} outputs; "
            "give one name per class, one per line"
        )
    return names


def load_cnn(arch: str, weights: str | Path | None = None, num_classes: int | None = None) -> nn.Module:
    """A torchvision architecture by name, with weights from a local file (or random weights).

    Args:
        arch: a ``torchvision.models.list_models()`` name, e.g. ``resnet18``, ``vgg11``.
        weights: a ``.safetensors`` file or a ``torch.save``-d state dict (loaded with
            ``weights_only=True``; pickled modules are refused). None: random weights.
        num_classes: number of outputs. Default: read from the weights' last linear layer, else 1000.

    Returns:
        The model (in whatever mode torchvision builds it: training mode; explainers scope eval mode).
    """
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if arch not in known:
        import difflib

        close = difflib.get_close_matches(arch, known, n=4)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise InputError(f"unknown torchvision architecture {arch!r}.{hint}")
    state = _read_state_dict(Path(weights)) if weights is not None else None
    if num_classes is None:
        num_classes = 1000
        if state is not None:
            # A parameter-free copy on the meta device names the head layer without initialising weights.
            with torch.device("meta"):
                probe = torchvision.models.get_model(arch, weights=None)
            num_classes = _num_classes_from_state(probe, state)
    with torch.random.fork_rng(
        devices=[]
    ):  # random weights are the same on every run; the caller's RNG untouched
        torch.manual_seed(0)
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    if state is not None:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[1:3]
            raise ModelLoadError(
                f"weights {weights} do not fit torchvision {arch} ({num_classes} classes): "
                + " ".join(line.strip() for line in first)
            ) from exc
    return model


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a weights-only torch file (a wrapped ``state_dict`` is unwrapped)."""
    if not path.is_file():
        raise InputError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError and friends: the file holds more than tensors
        raise ModelLoadError(
            f"cannot read {path} as a weights-only state dict ({type(exc).__name__}); save "
            "model.state_dict() with torch.save or safetensors, not the pickled module"
        ) from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path} does not hold a state dict (found {type(state).__name__})")
    return state


def _num_classes_from_state(model: nn.Module, state: dict[str, torch.Tensor]) -> int:
    """Rows of the weights' last ``nn.Linear`` (the classifier head), else 1000."""
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if linears and f"{linears[-1]}.weight" in state:
        return int(state[f"{linears[-1]}.weight"].shape[0])
    return 1000


def preprocess_image(
    image: Image.Image,
    size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[torch.Tensor, Image.Image]:
    """Resize the shorter side to ``size``, centre-crop a square, normalize.

    Returns:
        ``(x, shown)``: ``x`` of shape ``(1, 3, size, size)`` (normalized), and ``shown``, the cropped
        RGB image the maps are drawn over (``size x size``).
    """
    image = image.convert("RGB")
    width, height = image.size
    scale = size / min(width, height)
    resized = image.resize(
        (max(size, round(width * scale)), max(size, round(height * scale))), Image.BILINEAR
    )
    left = (resized.width - size) // 2
    top = (resized.height - size) // 2
    shown = resized.crop((left, top, left + size, top + size))
    pixels = torch.from_numpy(np.asarray(shown, dtype=np.float32) / 255.0).permute(2, 0, 1)
    x = (pixels - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    return x.unsqueeze(0), shown


def black_baseline(
    size: int | tuple[int, int], mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """A black image in the model's normalized input space, ``(1, 3, H, W)``, as an IG baseline."""
    height, width = (size, size) if isinstance(size, int) else size
    black = (torch.zeros(3, 1, 1) - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    return black.expand(3, height, width).unsqueeze(0).clone()


def resolve_targets(targets: Sequence[str | int], class_names: Sequence[str]) -> list[int]:
    """Class indices from indices or names (case-insensitive; a unique prefix is enough)."""
    resolved = []
    lowered = [name.lower() for name in class_names]
    for target in targets:
        text = str(target).strip()
        if text.lstrip("-").isdigit():
            index = int(text)
            if not 0 <= index < len(class_names):
                raise InputError(
                    f"target class {index} is out of range: the model has {len(class_names)} classes"
                )
            resolved.append(index)
            continue
        if text.lower() in lowered:
            resolved.append(lowered.index(text.lower()))
            continue
        matches = [i for i, name in enumerate(lowered) if name.startswith(text.lower())]
        if len(matches) != 1:
            found = ", ".join(class_names[i] for i in matches[:5]) if matches else "none"
            raise InputError(
                f"target class {text!r} names no single class (matches: {found}); give its index"
            )
        resolved.append(matches[0])
    return resolved
