"""What the ONNX encoders share and what needs no torch: the cache location and format, the availability
check, unit normalisation."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

CACHE_ENV = "COUNTERCLIP_ONNX_CACHE"  # overrides the cache directory
CACHE_FORMAT = 1  # bump when the layout or the exported graphs change meaning
OPSET = 17  # LayerNormalization is a native op from 17 on


def onnxruntime_available() -> bool:
    """True when the ``onnx`` extra (onnxruntime and onnx) is installed."""
    return (
        importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
    )


def default_cache_dir() -> Path:
    """``$COUNTERCLIP_ONNX_CACHE``, else ``$XDG_CACHE_HOME/counterclip/onnx``, else ``~/.cache/counterclip/onnx``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "counterclip" / "onnx"


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (float32; an all-zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
