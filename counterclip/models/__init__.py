"""CLIP backends behind one protocol (`ClipModel`): open_clip, Hugging Face, and the bundled model."""

from counterclip.models.base import (
    ClipModel,
    TextPositions,
    VisionGeometry,
    resolve_device,
    weights_fingerprint,
)
from counterclip.models.factory import bundled_dir, list_bundled_models, load_model
from counterclip.models.registry import backend_names, register_backend
from counterclip.models.spec import ModelSpec, parse_model_spec
from counterclip.models.towers import TowerInternals

__all__ = [
    "ClipModel",
    "ModelSpec",
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
