"""`load_model`: spec string -> loaded `ClipModel`, in steps (parse -> the registered backend -> load)."""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import torch

from counterclip.calibration import Calibration
from counterclip.errors import ModelLoadError
from counterclip.models.base import ClipModel, resolve_device
from counterclip.models.hub import hub_access
from counterclip.models.quiet import quiet_loading
from counterclip.models.registry import get_backend
from counterclip.models.spec import ModelSpec, parse_model_spec

LOG = logging.getLogger(__name__)
BUNDLED_CONFIG = "config.json"  # bare open_clip model config
BUNDLED_WEIGHTS = "weights.safetensors"  # fp16 state dict of that architecture
BUNDLED_CALIBRATION = "calibration.json"  # p(match | score) fitted on the model's own world (optional)


def bundled_dir(name: str) -> Path:
    """Directory of a bundled model inside the installed package (``counterclip/data/NAME``)."""
    return Path(str(resources.files("counterclip") / "data" / name))


def list_bundled_models() -> list[str]:
    """Names usable as ``bundled:NAME`` (directories holding both a config and weights)."""
    root = Path(str(resources.files("counterclip") / "data"))
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if (p / BUNDLED_CONFIG).is_file() and (p / BUNDLED_WEIGHTS).is_file()
    )


def load_bundled(spec: ModelSpec, device: torch.device) -> ClipModel:
    """The ``bundled`` backend: a model shipped in ``counterclip/data/NAME`` (an open_clip config + weights)."""
    from counterclip.models.open_clip_backend import OpenClipModel

    directory = bundled_dir(spec.name)
    config, weights = directory / BUNDLED_CONFIG, directory / BUNDLED_WEIGHTS
    if not config.is_file() or not weights.is_file():
        available = ", ".join(list_bundled_models()) or "none installed"
        raise ModelLoadError(f"no bundled model named {spec.name!r} (available: {available})")
    # Same open_clip path as a user's JSON config + local checkpoint: no special model class.
    resolved = ModelSpec("open_clip", str(config), str(weights), source="local")
    model = OpenClipModel(resolved, device, checkpoint=str(weights))
    model.spec = spec
    if (directory / BUNDLED_CALIBRATION).is_file():  # fitted by scripts/calibrate_bundled.py
        model.calibration = Calibration.read(directory / BUNDLED_CALIBRATION).check_model(
            model.fingerprint, str(spec)
        )
    return model


def load_model(spec: str | ModelSpec | dict, device: str | torch.device = "auto") -> ClipModel:
    """Load a CLIP-style model from a spec.

    Args:
        spec: a spec string (``bundled:shapes``, ``ViT-B-32:laion2b_s34b_b79k``, ``ViT-B-32:/path/w.pt``,
            ``arch.json:/path/w.safetensors``, ``hf:openai/clip-vit-base-patch32``, ``hf:/local/dir``,
            ``local-dir:/dir``, or ``SCHEME:...`` of a backend registered with
            `counterclip.models.registry.register_backend`), a `ModelSpec` or its dict form.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``... Default: ``auto``.

    Returns:
        ClipModel in eval mode.

    Raises:
        ModelLoadError: one line naming what could not be found or loaded, and what to do (offline, a
            spec whose weights come from a hub fails at once: "no network to fetch the weights of ...").

    Examples::

        >>> model = load_model("bundled:shapes", device="cpu")
        >>> model.encode_texts(["a red circle"]).shape
        torch.Size([1, 128])
    """
    parsed = parse_model_spec(spec)
    chosen = resolve_device(device)
    backend = get_backend(parsed.backend)
    with quiet_loading():  # no third-party progress bars or log lines; restored after
        if parsed.source in ("tag", "hub"):  # weights from a hub: one connection probe, no minute of retries
            with hub_access(f"the weights of {parsed}"):
                return backend.load(parsed, chosen)
        return backend.load(parsed, chosen)
