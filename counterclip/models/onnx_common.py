"""What the ONNX encoders share and what needs no torch: the cache location and format, the availability
check, unit normalisation, running a session in batches, the runtime choice and the runtime record an
index keeps."""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from counterclip.errors import InputError, RuntimeExportError

CACHE_ENV = "COUNTERCLIP_ONNX_CACHE"  # overrides the cache directory
CACHE_FORMAT = (
    3  # bump when the layout or the exported graphs change meaning (2: optimised graphs; 3: file hash, probe)
)
OPSET = 17  # LayerNormalization is a native op from 17 on
RUNTIMES = ("torch", "onnx")
PRECISIONS = ("fp32", "int8-dynamic", "int8-static")
FP32_MIN_COSINE = 0.9999  # every exported embedding vs torch's
INT8_MIN_COSINE = 0.99  # every int8 embedding vs its fp32 one


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


def run_in_batches(session: Any, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """Unit embeddings ``(n, d)`` of ``inputs`` ``(n, ...)`` from an ONNX Runtime ``session`` (one input),
    ``batch_size`` rows per run."""
    name = session.get_inputs()[0].name
    chunks = [
        session.run(None, {name: inputs[i : i + batch_size]})[0] for i in range(0, len(inputs), batch_size)
    ]
    return unit(np.concatenate(chunks))


def check_runtime(runtime: str | None, precision: str | None) -> None:
    """Refuse, in one line, a runtime or precision that cannot work here (before anything is loaded).

    ``None`` means "not given". A precision needs ``runtime="onnx"``; ``onnx`` needs the ``onnx`` extra.
    """
    if runtime is not None and runtime not in RUNTIMES:
        raise InputError(f"unknown runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}")
    if precision is not None:
        if precision not in PRECISIONS:
            raise InputError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
        if runtime != "onnx":
            raise InputError(f"--precision {precision} needs --runtime onnx (torch runs fp32 only)")
    if runtime == "onnx" and not onnxruntime_available():
        raise RuntimeExportError(
            "--runtime onnx needs onnxruntime and onnx: pip install 'counterclip[onnx]' (or use --runtime torch)"
        )


def combine_cosines(*cosines: float) -> float:
    """A lower bound of cos(a, z) given cos(a, b), cos(b, c), ... along a chain a -> b -> ... -> z.

    Angles between unit vectors obey the triangle inequality, so the angles add.

    Examples::

        >>> round(combine_cosines(1.0, 0.5), 6)
        0.5
    """
    angle = sum(math.acos(min(1.0, max(-1.0, float(c)))) for c in cosines)
    return math.cos(min(angle, math.pi))


def tolerance_cosine(precision: str, int8_min_cosine: float = INT8_MIN_COSINE) -> float:
    """How close to torch fp32 an embedding of an accepted ONNX tower of ``precision`` is guaranteed to be
    on the checked sample: the export bar, and for int8 also the int8 bar (angles added)."""
    if precision == "fp32":
        return FP32_MIN_COSINE
    return combine_cosines(FP32_MIN_COSINE, int8_min_cosine)


def runtime_record(info: dict[str, Any] | None, version: str, tolerance: float = 1.0) -> dict[str, Any]:
    """What an index records about the runtime that embedded it (`ModelRecord.runtime`).

    Args:
        info: an `OnnxEncoder.runtime_info()`; None for torch.
        version: the torch version (for torch; ONNX Runtime's comes from ``info``).
        tolerance: the encoder's `tolerance_cosine` (1.0 for torch).

    Returns:
        ``{"runtime", "precision", "version", "tolerance_cosine"}`` and, for onnx, ``opset``, the measured
        ``vs_torch`` cosine per tower (lowest) and max abs difference, and for int8 ``vs_fp32`` (lowest and
        mean cosine, recall@10, images checked and calibrated on).
    """
    if info is None:
        return {"runtime": "torch", "precision": "fp32", "version": version, "tolerance_cosine": 1.0}
    towers = info.get("towers", {})
    record: dict[str, Any] = {
        "runtime": "onnx",
        "precision": info.get("precision", {}).get("image", "fp32"),
        "version": info.get("version"),
        "opset": info.get("opset"),
        "tolerance_cosine": round(float(tolerance), 6),
        "vs_torch": {
            tower: {
                "cosine_min": towers[tower]["vs_torch"]["cosine_min"],
                "max_abs": towers[tower]["vs_torch"]["max_abs"],
            }
            for tower in sorted(towers)
        },
    }
    vs_fp32 = towers.get("image", {}).get("vs_fp32")
    if vs_fp32:
        record["vs_fp32"] = {
            key: vs_fp32[key]
            for key in ("cosine_min", "cosine_mean", "recall_at_10", "check_images", "calibration_images")
            if key in vs_fp32
        }
    return record
