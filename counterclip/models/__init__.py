"""CLIP backends behind one protocol (`ClipModel`): open_clip, Hugging Face, and the bundled model; and
their ONNX Runtime encoders (`OnnxEncoder`, and `OnnxTextEncoder` that runs a cached text tower without
torch).

The names are imported on first use (PEP 562), so ``from counterclip.models import OnnxTextEncoder`` or
``counterclip.models.spec`` does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from counterclip._lazy import lazy_exports

# public name -> the module that defines it
_LAZY: dict[str, str] = {
    "ClipModel": "counterclip.models.base",
    "Encoder": "counterclip.models.encoder",
    "ModelSpec": "counterclip.models.spec",
    "OnnxEncoder": "counterclip.models.onnx_runtime",
    "OnnxTextEncoder": "counterclip.models.onnx_text",
    "TextPositions": "counterclip.models.base",
    "TowerInternals": "counterclip.models.towers",
    "VisionGeometry": "counterclip.models.base",
    "backend_names": "counterclip.models.registry",
    "bundled_dir": "counterclip.models.factory",
    "list_bundled_models": "counterclip.models.factory",
    "load_model": "counterclip.models.factory",
    "parse_model_spec": "counterclip.models.spec",
    "register_backend": "counterclip.models.registry",
    "resolve_device": "counterclip.models.base",
    "weights_fingerprint": "counterclip.models.base",
}

__all__ = [
    "ClipModel",
    "Encoder",
    "ModelSpec",
    "OnnxEncoder",
    "OnnxTextEncoder",
    "TextPositions",
    "TowerInternals",
    "VisionGeometry",
    "backend_names",
    "bundled_dir",
    "list_bundled_models",
    "load_model",
    "parse_model_spec",
    "register_backend",
    "resolve_device",
    "weights_fingerprint",
]

if TYPE_CHECKING:  # static analysers and IDEs see the real imports
    from counterclip.models.base import (
        ClipModel,
        TextPositions,
        VisionGeometry,
        resolve_device,
        weights_fingerprint,
    )
    from counterclip.models.encoder import Encoder
    from counterclip.models.factory import bundled_dir, list_bundled_models, load_model
    from counterclip.models.onnx_runtime import OnnxEncoder
    from counterclip.models.onnx_text import OnnxTextEncoder
    from counterclip.models.registry import backend_names, register_backend
    from counterclip.models.spec import ModelSpec, parse_model_spec
    from counterclip.models.towers import TowerInternals


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
