"""The probe a cached ONNX tower must pass before it is used: one fixed input, embedded by the cached file
and by torch, compared at the bars the export was accepted at (torch is imported only when a probe is
computed with it: the torch-free text encoder checks against the recorded embedding).

The cache record holds the file's hash (`onnx_cache`, checked when the record is read) and torch's
embedding of the probe at export time (for `onnx_text.OnnxTextEncoder`, which runs without torch); with
torch at hand, `OnnxEncoder` compares against torch's embedding computed now. A file that loads but
computes something else (a damaged weight that kept the size, a record over another file) is then
found before it answers a query or embeds an index.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from counterclip.models.onnx_agreement import Agreement, compare
from counterclip.models.onnx_common import FP32_MIN_COSINE, unit

PROBE_TEXT = "a photo of a red circle next to a blue square"
PROBE_SEED = 20240528  # the probe image: normal pixels in the normalised range, from this seed
PROBE_MAX_ABS = 1e-2  # 10x the export's coordinate bar: one input the export was not checked on


def probe_input(model: Any, tower: str) -> np.ndarray:
    """The probe of ``tower``: ``(1, 3, H, W)`` float32 pixels or ``(1, L)`` int64 token ids."""
    import torch  # not at import time: the torch-free text encoder uses this module too

    if tower == "text":
        return np.asarray(model.tokenize([PROBE_TEXT])).astype(np.int64)
    h, w = model.vision_geometry.image_size
    generator = torch.Generator().manual_seed(PROBE_SEED)
    return torch.randn(1, 3, h, w, generator=generator).numpy()


def torch_probe(model: Any, tower: str) -> np.ndarray:
    """Torch's unit embedding ``(d,)`` of the probe."""
    import torch

    inputs = torch.as_tensor(probe_input(model, tower)).to(model.device)
    with torch.inference_mode():
        out = model.image_features(inputs.float()) if tower == "image" else model.text_features(inputs)
    return unit(out.float().cpu().numpy())[0]


def session_probe(session: Any, inputs: np.ndarray) -> np.ndarray:
    """The session's unit embedding ``(d,)`` of the probe."""
    name = session.get_inputs()[0].name
    return unit(np.asarray(session.run(None, {name: inputs})[0], dtype=np.float32))[0]


def probe_record(model: Any, tower: str) -> dict[str, Any]:
    """What a cache record keeps of the probe: its input and torch's embedding of it (for torch-free
    checks)."""
    given = {"text": PROBE_TEXT} if tower == "text" else {"seed": PROBE_SEED}
    return {**given, "embedding": [float(x) for x in torch_probe(model, tower)]}


def probe_problem(model: Any, tower: str, session: Any, precision: str, int8_min_cosine: float) -> str | None:
    """Why a session of ``tower`` at ``precision`` does not embed the probe as torch does now (the export's
    cosine bar, fp32 also a coordinate bar; int8 its own cosine bar), or None."""
    reference = torch_probe(model, tower)
    got = session_probe(session, probe_input(model, tower))
    fp32 = precision == "fp32"
    return embedding_problem(
        reference, got, FP32_MIN_COSINE if fp32 else int8_min_cosine, PROBE_MAX_ABS if fp32 else None
    )


def embedding_problem(
    reference: np.ndarray, got: np.ndarray, min_cosine: float, max_abs: float | None
) -> str | None:
    """Why ``got`` misses ``reference`` (cosine under ``min_cosine`` or a coordinate off by more than
    ``max_abs``), in words; None when it passes."""
    agreement: Agreement = compare(np.asarray(reference)[None], np.asarray(got)[None])
    if agreement.cosine_min < min_cosine:
        return f"cosine {agreement.cosine_min:.4f} to torch's embedding of the probe (bar {min_cosine})"
    if max_abs is not None and agreement.max_abs > max_abs:
        return f"a coordinate {agreement.max_abs:.2e} off torch's on the probe (bar {max_abs:g})"
    return None
