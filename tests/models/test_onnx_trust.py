"""Nothing cached is trusted: a cached ONNX tower must have the hash its record holds and embed a probe
as torch does before it is used; a damaged one is exported again, said in one warning line."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from counterclip.models import load_model  # noqa: E402
from counterclip.models.onnx_cache import file_digest  # noqa: E402
from counterclip.models.onnx_probe import PROBE_TEXT  # noqa: E402
from counterclip.models.onnx_runtime import OnnxEncoder  # noqa: E402
from counterclip.models.onnx_text import OnnxTextEncoder  # noqa: E402

TEXTS = ["a red circle", "a small blue square", "two green triangles"]


@pytest.fixture(scope="module")
def model(tiny_openclip: str):
    return load_model(tiny_openclip, device="cpu")


def negate_projection(path: Path, width: int) -> str:
    """Flip the sign of every float of the tower's last (.., width) weight in place: same size, other
    embeddings. Returns the weight's name."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    last = [t for t in proto.graph.initializer if t.dims and t.dims[-1] == width and len(t.dims) == 2][-1]
    raw = numpy_helper.to_array(last).astype("<f4").tobytes()
    data = path.read_bytes()
    at = data.find(raw)
    assert at > 0 and data.find(raw, at + 1) == -1
    flipped = bytearray(raw)
    flipped[3::4] = bytes(b ^ 0x80 for b in flipped[3::4])
    path.write_bytes(data[:at] + bytes(flipped) + data[at + len(raw) :])
    assert len(path.read_bytes()) == len(data)
    return last.name


def probe_cosine(message: str) -> float:
    """The cosine a probe warning reports."""
    return float(re.search(r"gives cosine (-?[0-9.]+) to torch's embedding of the probe", message).group(1))


def cosine(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_the_record_holds_the_hash_and_torchs_probe(model, tmp_path: Path) -> None:
    encoder = OnnxEncoder(model, cache_dir=tmp_path)
    encoder.encode_texts(["a"])
    encoder.encode_images(torch.zeros(1, 3, *model.vision_geometry.image_size))
    for tower in ("text", "image"):
        record = json.loads(encoder.cache.record_path(tower, "fp32").read_text())
        assert record["xxh3"] == file_digest(encoder.cache.onnx_path(tower, "fp32"))
        assert len(record["probe"]["embedding"]) == model.embed_dim
    text = json.loads(encoder.cache.record_path("text", "fp32").read_text())["probe"]
    assert text["text"] == PROBE_TEXT
    assert np.allclose(text["embedding"], model.encode_texts([PROBE_TEXT]).numpy()[0], atol=1e-6)


def test_a_negated_text_projection_is_found_by_its_hash(model, tmp_path: Path, caplog) -> None:
    OnnxEncoder(model, cache_dir=tmp_path).encode_texts(["warm"])
    encoder = OnnxEncoder(model, cache_dir=tmp_path)
    path = encoder.cache.onnx_path("text", "fp32")
    negate_projection(path, model.embed_dim)
    with caplog.at_level(logging.WARNING, logger="counterclip"):
        got = encoder.encode_texts(TEXTS)
    assert cosine(got, model.encode_texts(TEXTS)).min() > 0.9999
    assert encoder.exported == ["text.fp32"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0] and "exporting it again" in warnings[0]


def test_a_file_matching_its_record_but_not_torch_is_found_by_the_probe(
    model, tmp_path: Path, caplog
) -> None:
    OnnxEncoder(model, cache_dir=tmp_path).encode_texts(["warm"])
    encoder = OnnxEncoder(model, cache_dir=tmp_path)
    path, record_path = encoder.cache.onnx_path("text", "fp32"), encoder.cache.record_path("text", "fp32")
    negate_projection(path, model.embed_dim)
    record = json.loads(record_path.read_text())
    record["xxh3"] = file_digest(path)  # a record written over another file
    record_path.write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING, logger="counterclip"):
        got = encoder.encode_texts(TEXTS)
    assert cosine(got, model.encode_texts(TEXTS)).min() > 0.9999 and encoder.exported == ["text.fp32"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith("ONNX cache: the cached text tower of") and probe_cosine(warnings[0]) < 0.9


def test_a_garbled_image_tower_is_exported_again_before_a_build(
    model, tmp_path: Path, monkeypatch, caplog
) -> None:
    from counterclip.index_builder import Index, build_index
    from counterclip.shapes import generate_folder

    monkeypatch.setenv("COUNTERCLIP_ONNX_CACHE", str(tmp_path / "cache"))
    encoder = OnnxEncoder(model)
    encoder.encode_images(torch.zeros(1, 3, *model.vision_geometry.image_size))
    path = encoder.cache.onnx_path("image", "fp32")
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 256] = np.random.default_rng(1).integers(0, 256, 256, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    generate_folder(tmp_path / "f", n=6, seed=1, size=48)
    with caplog.at_level(logging.WARNING, logger="counterclip"):
        build_index(tmp_path / "f", tmp_path / "idx", model=model, runtime="onnx", progress=False)
    assert any("not the file its record describes" in r.getMessage() for r in caplog.records)
    with Index.open(tmp_path / "idx") as idx:
        stored = idx.images.vectors(idx.images.ids)
        paths = [tmp_path / "f" / m["path"] for m in idx.images.meta(idx.images.ids)]
    from PIL import Image

    torch_vectors = model.encode_pil([Image.open(p).convert("RGB") for p in paths]).numpy()
    assert cosine(stored, torch_vectors).min() > 0.999


def test_the_torch_free_text_encoder_refuses_a_damaged_tower(model, tmp_path: Path, caplog) -> None:
    OnnxEncoder(model, cache_dir=tmp_path).encode_texts(["warm"])
    encoder, reason = OnnxTextEncoder.open(model.spec, model.fingerprint, tmp_path)
    assert encoder is not None and reason == ""
    directory = tmp_path / model.fingerprint
    path, record_path = directory / "text.fp32.onnx", directory / "text.fp32.json"
    negate_projection(path, model.embed_dim)
    encoder, reason = OnnxTextEncoder.open(model.spec, model.fingerprint, tmp_path)
    assert encoder is None and reason == f"{path} is not the file its record describes (damaged or replaced)"
    record = json.loads(record_path.read_text())
    record["xxh3"] = file_digest(path)
    record_path.write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING, logger="counterclip"):
        encoder, reason = OnnxTextEncoder.open(model.spec, model.fingerprint, tmp_path)
    assert encoder is None and reason.endswith("to torch's embedding of the probe (bar 0.9999)")
    assert probe_cosine(reason) < 0.9
    assert any("ONNX cache: the cached text tower" in r.getMessage() for r in caplog.records)
