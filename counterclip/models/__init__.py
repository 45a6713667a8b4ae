"""CLIP backends behind one protocol (`ClipModel`): open_clip, Hugging Face, and the bundled model."""

from counterclip.models.base import ClipModel, VisionGeometry, resolve_device, weights_fingerprint
from counterclip.models.factory import bundled_dir, list_bundled_models, load_model
from counterclip.models.spec import ModelSpec, parse_model_spec

__all__ = [
    "ClipModel",
    "ModelSpec",
    "VisionGeometry",
    "bundled_dir",
    "list_bundled_models",
    "load_model",
    "parse_model_spec",
    "resolve_device",
    "weights_fingerprint",
]
