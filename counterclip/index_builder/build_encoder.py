"""Part of build stage 2 (the plan): what embeds a run's images and captions, made ready before any write.

The runtime is the one asked for, else the recorded one, else torch. An ONNX encoder exports and checks
its towers now; an int8 image tower is checked (and, static, calibrated) on up to `INT8_SAMPLE` of the
folder's own images and refused, with nothing written, when it misses the bars. The runtime record
(`runtime_entry`) goes into the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from counterclip.index_builder.config import IndexCfg
from counterclip.index_builder.decode import DecodeError, DecodeOptions, load_image
from counterclip.index_builder.scan import scan_folder
from counterclip.models import ClipModel
from counterclip.models.onnx_common import check_runtime, runtime_record

INT8_SAMPLE = 64  # images of the folder an int8 tower is checked (and calibrated) on


@dataclass(frozen=True)
class Encoding:
    """What embeds: the model itself (torch) or an `OnnxEncoder` over it, with its runtime record."""

    encoder: Any  # `preprocess`, `encode_images`, `encode_texts`
    record: dict[str, Any]  # `onnx_common.runtime_record` of this encoder


def prepare_encoder(
    model: ClipModel,
    recorded: dict[str, Any],
    runtime_arg: str | None,
    precision_arg: str | None,
    sample_from: tuple[Path, DecodeOptions, Path],
    cfg: IndexCfg,
) -> Encoding:
    """Choose the runtime (asked, else ``recorded``, else torch) and make its encoder ready: ONNX towers
    exported and checked, an int8 tower checked on the folder's own images, before anything is written.

    ``sample_from`` is ``(image folder, decode options, index directory)``: where the int8 sample comes from.
    """
    runtime = runtime_arg or str(recorded.get("runtime", "torch"))
    precision = precision_arg or (str(recorded.get("precision", "fp32")) if runtime_arg is None else "fp32")
    if runtime == "torch":
        return Encoding(model, runtime_record(None, _torch_version()))
    check_runtime(runtime, precision)
    from counterclip.models.onnx_runtime import OnnxEncoder

    sample = int8_sample(model, *sample_from) if precision != "fp32" else None
    encoder = OnnxEncoder(model, precision=precision, sample=sample, check_batch_size=cfg.batch_size)
    for tower in ("image", "text"):
        encoder.session(tower)  # export, check (and quantise) now
    return Encoding(encoder, encoder.manifest_record())


def int8_sample(model: ClipModel, root: Path, decode: DecodeOptions, index_dir: Path) -> Any:
    """Preprocessed pixels of up to `INT8_SAMPLE` of the folder's images, evenly spread in path order."""
    import torch

    paths = [e.rel for e in scan_folder(root, exclude=(index_dir,)) if e.error is None]
    paths.sort()
    step = max(1, len(paths) // INT8_SAMPLE)
    pixels = []
    for rel in paths[::step]:
        try:
            pixels.append(model.preprocess(load_image(root / rel, decode).model_input))
        except DecodeError:
            continue
        if len(pixels) == INT8_SAMPLE:
            break
    h, w = model.vision_geometry.image_size
    return torch.stack(pixels) if pixels else torch.zeros(0, 3, h, w)


def runtime_entry(
    record: dict[str, Any], recorded: dict[str, Any] | None, had_vectors: bool
) -> dict[str, Any]:
    """This run's runtime record; when earlier vectors came from another runtime, its tolerance is the
    lower of both (the index holds vectors of each)."""
    entry = dict(record)
    if had_vectors and recorded:
        mine = f"{entry['runtime']}/{entry['precision']}"
        before = recorded.get("embedded_with") or [f"{recorded['runtime']}/{recorded['precision']}"]
        if {*before, mine} != {mine}:
            entry["embedded_with"] = sorted({*before, mine})
        entry["tolerance_cosine"] = min(
            float(entry["tolerance_cosine"]), float(recorded.get("tolerance_cosine", 1.0))
        )
    return entry


def _torch_version() -> str:
    import torch

    return torch.__version__
