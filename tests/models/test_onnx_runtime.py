"""ONNX Runtime encoder: export round trips against torch, the cache, text-only loading, int8 bars."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import write_broken_for_int8, write_tiny_openclip

if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
    pytest.skip(
        "onnxruntime and onnx are not installed (pip install 'counterclip[onnx]')", allow_module_level=True
    )

from counterclip.errors import InputError, QuantizationRefusedError, RuntimeExportError  # noqa: E402
from counterclip.index_builder.decode import DecodeOptions  # noqa: E402
from counterclip.index_builder.pipeline import WorkItem, embed_images, sample_pixels  # noqa: E402
from counterclip.models import load_model, onnx_export, onnx_graph  # noqa: E402
from counterclip.models import onnx_runtime as ort_mod  # noqa: E402
from counterclip.models.encoder import Encoder  # noqa: E402
from counterclip.models.onnx_runtime import (  # noqa: E402
    CACHE_ENV,
    OnnxEncoder,
    compare,
    create_encoder,
    default_cache_dir,
    recall_at_k,
)

TEXTS = ["a photo of a dog", "", "a small red circle on a blue background", "x " * 40]


@pytest.fixture(scope="module")
def openclip_model(tiny_openclip: str):
    return load_model(tiny_openclip, device="cpu")


@pytest.fixture(scope="module")
def hf_model(tiny_hf_dir: Path):
    return load_model(f"hf:{tiny_hf_dir}", device="cpu")


def _pixels(model, n: int, seed: int = 0) -> torch.Tensor:
    """Preprocessed pixels of ``n`` seeded random images (through the model's own transform)."""
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)) for _ in range(n)]
    return model.preprocess_batch(images)


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*.onnx"))


# --- measures ---------------------------------------------------------------------------------------------
def test_compare_oracle() -> None:
    reference = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    candidate = np.array([[1.0, 0.0], [1.0, 1.0]], dtype=np.float32) / np.array([[1.0], [np.sqrt(2)]])
    agreement = compare(reference, candidate)
    assert agreement.cosine_min == pytest.approx(1 / np.sqrt(2), abs=1e-6)
    assert agreement.cosine_mean == pytest.approx((1 + 1 / np.sqrt(2)) / 2, abs=1e-6)
    assert agreement.max_abs == pytest.approx(1 / np.sqrt(2), abs=1e-6)  # row 2, first coordinate
    assert agreement.samples == 2


def test_recall_at_k_oracle() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(30, 8)).astype(np.float32)
    assert recall_at_k(reference, reference.copy(), k=10) == 1.0
    # Neighbour lists of a candidate made of unrelated vectors overlap only by chance (~10/29).
    unrelated = rng.normal(size=(30, 8)).astype(np.float32)
    assert recall_at_k(reference, unrelated, k=10) < 0.6
    # Hand case on a line: the neighbours of 0 are 1, 2; after swapping the vectors of items 2 and 3 the
    # candidate index returns 1, 3 for query 0.
    angles = np.array([0.0, 0.1, 0.2, 0.3, 1.5])
    line = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    swapped = line[[0, 1, 3, 2, 4]]
    with pytest.raises(InputError, match="more than 2 items"):
        recall_at_k(line[:2], line[:2], k=2)
    found = recall_at_k(line, swapped, k=2)
    # query 0: {1,2} vs {1,3} -> 1/2; 1: {0,2} vs {0,2}... computed by brute force below.
    expected = []
    for q in range(5):
        ref_scores = line @ line[q]
        cand_scores = swapped @ line[q]
        ref_scores[q] = cand_scores[q] = -np.inf
        a = set(np.argsort(-ref_scores, kind="stable")[:2])
        b = set(np.argsort(-cand_scores, kind="stable")[:2])
        expected.append(len(a & b) / 2)
    assert found == pytest.approx(float(np.mean(expected)))
    assert found < 1.0


def test_default_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "counterclip" / "onnx"


# --- export round trips -----------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["openclip_model", "hf_model"])
def test_round_trip_matches_torch(which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    model = request.getfixturevalue(which)
    encoder = OnnxEncoder(model, cache_dir=tmp_path, threads=1)
    assert isinstance(encoder, Encoder) and isinstance(model, Encoder)
    # texts: a batch split over several runs, and the single-string form
    got = encoder.encode_texts(TEXTS, batch_size=3)
    want = model.encode_texts(TEXTS)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-5
    assert torch.allclose(got.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5)
    assert torch.allclose(encoder.encode_texts(TEXTS[2]), want[2], atol=1e-5)
    # images: real preprocessed images, batches of an odd size, and one image alone
    pixels = _pixels(model, 5)
    got = encoder.encode_images(pixels, batch_size=2)
    want = model.encode_images(pixels)
    assert (got - want).abs().max().item() < 1e-5
    assert ((got * want).sum(dim=1) > 1 - 1e-6).all()
    assert torch.allclose(encoder.encode_images(pixels[3]), want[3], atol=1e-5)
    # the figures recorded for the manifest are the measured ones, within the bars
    info = encoder.runtime_info()
    assert info["runtime"] == "onnxruntime" and "CPUExecutionProvider" in info["providers"]
    assert info["precision"] == {"image": "fp32", "text": "fp32"} and info["threads"] == 1
    for tower in ("image", "text"):  # idle threads sleep (the pipeline's decode threads need the CPU)
        options = encoder.session(tower).get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert info["session_config"] == {"session.intra_op.allow_spinning": "0"}
    for tower in ("image", "text"):
        check = info["towers"][tower]["vs_torch"]
        assert check["cosine_min"] >= 0.9999 and check["max_abs"] <= 1e-3 and check["samples"] >= 4
    assert encoder.encode_texts([]).shape == (0, model.embed_dim)


def test_text_only_use_never_exports_the_image_tower(openclip_model, tmp_path: Path) -> None:
    encoder = OnnxEncoder(openclip_model, cache_dir=tmp_path)
    encoder.encode_texts(["a red circle"])
    assert _files(tmp_path) == ["text.fp32.onnx"]
    assert list(encoder.runtime_info()["towers"]) == ["text"]
    assert encoder.exported == ["text.fp32"]


def test_cache_is_reused_and_keyed_by_fingerprint(openclip_model, tmp_path: Path) -> None:
    first = OnnxEncoder(openclip_model, cache_dir=tmp_path)
    expected = first.encode_texts(TEXTS)
    path = first.cache.onnx_path("text", "fp32")
    stamp = path.stat().st_mtime_ns
    second = OnnxEncoder(openclip_model, cache_dir=tmp_path)
    assert torch.equal(second.encode_texts(TEXTS), expected)
    assert second.exported == [] and path.stat().st_mtime_ns == stamp  # read, not re-exported
    assert (
        second.runtime_info()["towers"]["text"]["vs_torch"]
        == first.runtime_info()["towers"]["text"]["vs_torch"]
    )
    # other weights: another fingerprint, another cache entry, other embeddings
    config, weights = write_tiny_openclip(tmp_path / "other", seed=1)
    other = load_model(f"{config}:{weights}", device="cpu")
    assert other.fingerprint != openclip_model.fingerprint
    third = OnnxEncoder(other, cache_dir=tmp_path)
    assert torch.allclose(third.encode_texts(TEXTS), other.encode_texts(TEXTS), atol=1e-5)
    assert third.exported == ["text.fp32"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "other") == sorted(
        [openclip_model.fingerprint, other.fingerprint]
    )


def test_damaged_cache_entry_is_exported_again(openclip_model, tmp_path: Path) -> None:
    OnnxEncoder(openclip_model, cache_dir=tmp_path).encode_texts(["a"])
    encoder = OnnxEncoder(openclip_model, cache_dir=tmp_path)
    path = encoder.cache.onnx_path("text", "fp32")
    path.write_bytes(path.read_bytes()[:1000])  # truncated: the size no longer matches the record
    assert torch.allclose(encoder.encode_texts(TEXTS), openclip_model.encode_texts(TEXTS), atol=1e-5)
    assert encoder.exported == ["text.fp32"]
    record = json.loads(encoder.cache.record_path("text", "fp32").read_text())
    assert record["bytes"] == path.stat().st_size and record["fingerprint"] == openclip_model.fingerprint


def test_export_that_does_not_match_torch_is_refused(
    openclip_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_export = ort_mod.export_tower

    def export_other_weights(model, tower, path, opset=ort_mod.OPSET, **options):
        """Export with the text projection perturbed, then put the weights back (a wrong export)."""
        projection = model.module.text_projection
        saved = projection.detach().clone()
        with torch.no_grad():
            projection.add_(0.5 * torch.randn_like(projection))
        try:
            real_export(model, tower, path, opset, **options)
        finally:
            with torch.no_grad():
                projection.copy_(saved)

    monkeypatch.setattr(onnx_export, "export_tower", export_other_weights)
    encoder = OnnxEncoder(openclip_model, cache_dir=tmp_path)
    with pytest.raises(
        RuntimeExportError, match=r"does not match torch: lowest cosine 0\.\d+ \(needs >= 0\.9999\)"
    ):
        encoder.encode_texts(["a"])  # the optimised graph misses the bars, and so does the plain fallback
    assert _files(tmp_path) == []  # nothing refused enters the cache
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # no temp or scratch files left


# --- the optimised graph ----------------------------------------------------------------------------------
def _op_counts(path: Path) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


@pytest.mark.parametrize(
    ("which", "attention_op"), [("openclip_model", "MultiHeadAttention"), ("hf_model", "Attention")]
)
def test_optimised_graph_fuses_attention_and_matches_torch(
    which: str, attention_op: str, request: pytest.FixtureRequest, tmp_path: Path, capsys
) -> None:
    model = request.getfixturevalue(which)
    encoder = OnnxEncoder(model, cache_dir=tmp_path)
    pixels = _pixels(model, 5)
    assert (
        encoder.encode_images(pixels, batch_size=3) - model.encode_images(pixels)
    ).abs().max().item() < 1e-5
    graph = json.loads(encoder.cache.record_path("image", "fp32").read_text())["graph"]
    layers = 2  # both tiny image towers
    # the record says what was applied, and the file holds it: one fused attention per layer (open_clip's
    # fast path written as MultiHeadAttention at export; Hugging Face's pattern fused by ONNX Runtime's
    # optimizer), the residual adds fused with the layer norms, no softmax left outside a fused op
    assert graph["optimization"] == "fused" and "fallback_reason" not in graph
    assert (graph["num_heads"], graph["hidden_size"]) == (2, 64 if which == "openclip_model" else 32)
    assert graph["fused"][attention_op] == layers and graph["fused"]["SkipLayerNormalization"] >= layers
    # the last layer for the class token only: query projection (or none, in HF's packed Attention op, whose
    # output is sliced instead), attention, output projection, MLP, and the norms / residual adds between
    assert graph["pooled_token_only"] == 8
    ops = _op_counts(encoder.cache.onnx_path("image", "fp32"))
    assert ops[attention_op] == layers and "Softmax" not in ops
    assert ops["SkipLayerNormalization"] == graph["fused"]["SkipLayerNormalization"]
    assert encoder.runtime_info()["towers"]["image"]["graph"] == graph
    assert (
        capsys.readouterr().out == ""
    )  # the optimizer's notes do not reach stdout (the CLI prints JSON there)


def test_attention_shape_reads_the_layers_each_tower_runs(openclip_model, hf_model) -> None:
    # tiny open_clip: image width 64 in heads of 32, text width 32 with 2 heads; tiny HF CLIP: 32 and 2 heads
    assert ort_mod.attention_shape(openclip_model, "image") == (2, 64)
    assert ort_mod.attention_shape(openclip_model, "text") == (2, 32)
    assert ort_mod.attention_shape(hf_model, "image") == (2, 32)
    for model in (openclip_model, hf_model):  # the hooks are gone
        assert not any(m._forward_hooks for m in model.module.modules())


def test_fused_attention_symbolic_is_registered_only_during_the_export(tmp_path: Path) -> None:
    """The fast path of nn.MultiheadAttention exports only inside `_fused_attention` (no global change)."""
    torch.manual_seed(0)
    attention = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()

    class SelfAttention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = attention

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attention(x, x, x, need_weights=False)[0]

    x = torch.randn(3, 5, 8)

    def export(path: Path) -> None:
        with torch.no_grad():
            torch.onnx.export(
                SelfAttention(),
                (x,),
                str(path),
                opset_version=ort_mod.OPSET,
                dynamo=False,
            )

    with onnx_export._fused_attention(ort_mod.OPSET):
        export(tmp_path / "fused.onnx")
    assert _op_counts(tmp_path / "fused.onnx")["MultiHeadAttention"] == 1
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "fused.onnx"), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        want = SelfAttention()(x).numpy()
    assert np.abs(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0] - want).max() < 1e-5
    from torch.onnx._internal.torchscript_exporter.registration import registry

    assert not registry.is_registered_op(onnx_export._MHA_FAST_PATH, ort_mod.OPSET)  # unregistered again
    with pytest.raises(Exception):  # noqa: B017, PT011 - torch's own error for an op with no export
        export(tmp_path / "after.onnx")


def _pooled_graph(index: int, extra_output: bool = False):
    """x (B, S, 4) -> LayerNorm -> MatMul -> + bias -> + x -> token ``index`` (B, 4); optionally the MatMul
    output is also a graph output (then it must stay whole)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "gain"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "shift"),
        numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "weight"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "bias"),
        numpy_helper.from_array(np.array(index, np.int64), "index"),
    ]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gain", "shift"], ["normed"], axis=-1),
        helper.make_node("MatMul", ["normed", "weight"], ["projected"]),
        helper.make_node("Add", ["bias", "projected"], ["biased"]),
        helper.make_node("Add", ["x", "biased"], ["summed"]),
        helper.make_node("Gather", ["summed", "index"], ["pooled"], axis=1),
    ]
    outputs = [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["b", 4])]
    if extra_output:
        outputs.append(helper.make_tensor_value_info("projected", TensorProto.FLOAT, ["b", "s", 4]))
    graph = helper.make_graph(
        nodes,
        "pooled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", 4])],
        outputs,
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", ort_mod.OPSET)])


def _run_graph(model, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def test_narrow_to_pooled_token_oracle() -> None:
    x = np.random.default_rng(1).standard_normal((3, 5, 4)).astype(np.float32)
    model = _pooled_graph(0)
    want = _run_graph(model, x)[0]
    assert ort_mod.narrow_to_pooled_token(model) == 4  # every node before the Gather
    got = _run_graph(model, x)[0]
    assert np.abs(got - want).max() < 1e-6
    slices = [n for n in model.graph.node if n.op_type == "Slice"]
    assert len(slices) == 1 and slices[0].input[0] == "x"  # x sliced once, for the norm and the residual
    # the token computed by hand: LayerNorm, projection, bias, residual on token 0 alone
    token = x[:, 0]
    normed = (token - token.mean(-1, keepdims=True)) / np.sqrt(token.var(-1, keepdims=True) + 1e-5)
    init = {t.name: onnx_numpy(t) for t in model.graph.initializer}
    by_hand = token + (normed * init["gain"] + init["shift"]) @ init["weight"] + init["bias"]
    assert np.abs(got - by_hand).max() < 1e-5
    # another token kept: nothing changes; an intermediate that is also an output stays whole
    for other in (_pooled_graph(1), _pooled_graph(0, extra_output=True)):
        before = other.SerializeToString()
        want = _run_graph(other, x)
        narrowed = ort_mod.narrow_to_pooled_token(other)
        got = _run_graph(other, x)
        assert all(np.abs(a - b).max() < 1e-6 for a, b in zip(got, want, strict=True))
        if narrowed == 0:
            assert other.SerializeToString() == before
        else:  # only the residual add after the kept output narrows
            assert narrowed == 2 and got[1].shape == (3, 5, 4)
    assert ort_mod.narrow_to_pooled_token(_pooled_graph(1)) == 0


def onnx_numpy(tensor) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor)


def test_narrowed_graph_that_misses_the_bars_falls_back_to_the_fused_graph(
    openclip_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Narrowed to the wrong token (the first patch instead of the class token), the graph computes other
    embeddings: the torch check catches it and the fused graph without the narrowing is kept."""
    from onnx import numpy_helper

    real = ort_mod.narrow_to_pooled_token

    def wrong_token(model) -> int:
        count = real(model)
        for tensor in model.graph.initializer:
            if tensor.name.endswith("_starts") or tensor.name.endswith("_ends"):
                tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) + 1, tensor.name))
        return count

    monkeypatch.setattr(onnx_graph, "narrow_to_pooled_token", wrong_token)
    encoder = OnnxEncoder(openclip_model, cache_dir=tmp_path)
    pixels = _pixels(openclip_model, 4)
    assert (encoder.encode_images(pixels) - openclip_model.encode_images(pixels)).abs().max().item() < 1e-5
    graph = json.loads(encoder.cache.record_path("image", "fp32").read_text())["graph"]
    assert graph["optimization"] == "fused" and graph["pooled_token_only"] == 0
    assert "does not match torch: lowest cosine" in graph["fallback_reason"]
    assert "Slice" not in _op_counts(encoder.cache.onnx_path("image", "fp32"))


def test_optimiser_failure_falls_back_to_the_plain_export(
    openclip_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    def cannot_fuse(*args, **kwargs):
        raise ValueError("unsupported model type for fusion")

    monkeypatch.setattr(onnx_export, "optimize_graph", cannot_fuse)
    encoder = OnnxEncoder(openclip_model, cache_dir=tmp_path)
    pixels = _pixels(openclip_model, 4)
    with caplog.at_level("WARNING", logger="counterclip.models.onnx_export"):
        got = encoder.encode_images(pixels)
    assert (got - openclip_model.encode_images(pixels)).abs().max().item() < 1e-5
    graph = json.loads(encoder.cache.record_path("image", "fp32").read_text())["graph"]
    assert graph == {
        "optimization": "plain",
        "fallback_reason": "ValueError: unsupported model type for fusion",
    }
    assert "using the plain graph" in caplog.text and "unsupported model type" in caplog.text
    ops = _op_counts(encoder.cache.onnx_path("image", "fp32"))
    assert "MultiHeadAttention" not in ops and ops["Softmax"] == 2  # attention op by op
    assert _files(tmp_path) == ["image.fp32.onnx"] and not any(tmp_path.rglob("*.tmp"))


def test_fused_graph_that_misses_the_bars_falls_back_to_the_plain_export(
    openclip_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The torch comparison guards the optimised graph: attention fused with the wrong head count (one head
    of 64 instead of two of 32) computes other embeddings, so the plain export is used instead."""
    real = onnx_export._mha_as_attention

    def one_head(g, query, key, value, embed_dim, num_heads, *rest):
        return real(g, query, key, value, embed_dim, g.op("Constant", value_t=torch.tensor(1)), *rest)

    monkeypatch.setattr(onnx_export, "_mha_as_attention", one_head)
    encoder = OnnxEncoder(openclip_model, cache_dir=tmp_path)
    pixels = _pixels(openclip_model, 4)
    assert (encoder.encode_images(pixels) - openclip_model.encode_images(pixels)).abs().max().item() < 1e-5
    record = json.loads(encoder.cache.record_path("image", "fp32").read_text())
    assert record["graph"]["optimization"] == "plain"
    assert "does not match torch: lowest cosine" in record["graph"]["fallback_reason"]
    assert record["vs_torch"]["cosine_min"] >= 0.9999  # the figures of the plain export that was kept


# --- int8 -------------------------------------------------------------------------------------------------
def _broken_for_int8(tmp_path: Path):
    """The tiny open_clip model whose int8 image tower really breaks (`tiny_models.write_broken_for_int8`)."""
    return load_model(write_broken_for_int8(tmp_path / "broken"), device="cpu")


def test_int8_that_misses_the_bars_is_refused_with_the_figures(tmp_path: Path) -> None:
    model = _broken_for_int8(tmp_path)
    sample = _pixels(model, 24, seed=1)
    cache = tmp_path / "cache"
    # fp32 stays exact on this model...
    fp32 = OnnxEncoder(model, cache_dir=cache)
    assert (fp32.encode_images(sample) - model.encode_images(sample)).abs().max().item() < 1e-5
    # ...int8 is refused, naming both figures and bars, and nothing int8 enters the cache
    for precision in ("int8-dynamic", "int8-static"):
        encoder = OnnxEncoder(model, cache_dir=cache, precision=precision, sample=sample, calibration_size=12)
        with pytest.raises(QuantizationRefusedError) as caught:
            encoder.encode_images(sample[:2])
        message = str(caught.value)
        assert f"{precision} image tower" in message and "refused" in message
        assert (
            "needs >= 0.99)" in message and "needs >= 0.98)" in message and "on 24 of your images" in message
        )
        cosine = float(message.split("lowest cosine to fp32 ")[1].split()[0])
        assert cosine < 0.99
    assert _files(cache) == ["image.fp32.onnx"]


def test_int8_accepted_records_its_figures_and_is_reused(tmp_path: Path) -> None:
    # The bundled (trained) model on 48 shapes images: int8-dynamic passes both bars with a margin here
    # (cosine ~0.9997, recall@10 ~0.998). Random tiny models are a poor case: their embeddings crowd into
    # a narrow cone, so neighbour ranks flip on tiny differences (recall@10 0.96-0.98).
    from counterclip.shapes.evaluate import render_set

    model = load_model("bundled:shapes", device="cpu")
    sample = model.preprocess_batch(render_set(48, 3)[1])
    encoder = OnnxEncoder(model, cache_dir=tmp_path, precision="int8-dynamic", sample=sample)
    got = encoder.encode_images(
        sample, batch_size=64
    )  # the check's batch size (dynamic ranges are per batch)
    check = encoder.runtime_info()["towers"]["image"]["vs_fp32"]
    assert check["check_images"] == 48 and check["calibration_images"] == 0 and check["batch_size"] == 64
    assert check["cosine_min"] >= 0.99 and check["recall_at_10"] >= 0.98  # the bars it was accepted on
    # the recorded figures are what the int8 embeddings really give against fp32 (recomputed here)
    fp32 = OnnxEncoder(model, cache_dir=tmp_path).encode_images(sample).numpy()
    assert compare(fp32, got.numpy()).cosine_min == pytest.approx(check["cosine_min"], abs=1e-6)
    assert recall_at_k(fp32, got.numpy()) == pytest.approx(check["recall_at_10"])
    assert np.abs(fp32 - got.numpy()).max() > 1e-4  # it is really another (int8) graph
    # int8 everywhere but the output projection (one row per image: nothing to gain, its error unshared)
    import onnx

    record = json.loads(encoder.cache.record_path("image", "int8-dynamic").read_text())
    nodes = onnx.load(str(encoder.cache.onnx_path("image", "int8-dynamic"))).graph.node
    kept = [n for n in nodes if n.name in record["kept_fp32"]]
    assert len(record["kept_fp32"]) == 1 and [n.op_type for n in kept] == ["MatMul"]
    assert sum(n.op_type == "MatMulInteger" for n in nodes) >= 4 * 4  # Q, K, V, out, MLP x 4 layers
    assert record["graph"]["optimization"] == "fused"  # the fused fp32 graph was quantised
    # an accepted int8 tower is reused without a sample (a query process), with the same figures
    again = OnnxEncoder(model, cache_dir=tmp_path, precision="int8-dynamic")
    assert torch.equal(again.encode_images(sample), got)
    assert again.exported == [] and again.runtime_info()["towers"]["image"]["vs_fp32"] == check
    # an impossible bar is never met: the same tower is refused, not accepted from the cache
    strict = OnnxEncoder(
        model, cache_dir=tmp_path, precision="int8-dynamic", sample=sample, min_cosine=1.000001
    )
    with pytest.raises(QuantizationRefusedError, match="needs >= 1.000001"):
        strict.encode_images(sample[:1])


def test_int8_needs_a_sample_when_nothing_is_cached(openclip_model, tmp_path: Path) -> None:
    with pytest.raises(RuntimeExportError, match="int8-static needs a sample of your own images"):
        OnnxEncoder(openclip_model, cache_dir=tmp_path, precision="int8-static").encode_images(
            _pixels(openclip_model, 1)
        )
    with pytest.raises(InputError, match="at least 21 of your images"):
        OnnxEncoder(
            openclip_model, cache_dir=tmp_path, precision="int8-dynamic", sample=_pixels(openclip_model, 5)
        )
    with pytest.raises(InputError, match=r"shape \(n, 3, 32, 32\)"):
        OnnxEncoder(
            openclip_model, cache_dir=tmp_path, precision="int8-dynamic", sample=torch.zeros(30, 3, 8, 8)
        )
    with pytest.raises(InputError, match="unknown ONNX precision 'int4'"):
        OnnxEncoder(openclip_model, cache_dir=tmp_path, precision="int4")


def test_create_encoder(openclip_model, tmp_path: Path) -> None:
    assert create_encoder(openclip_model, "torch") is openclip_model
    assert isinstance(create_encoder(openclip_model, "onnx", cache_dir=tmp_path), OnnxEncoder)
    with pytest.raises(InputError, match="unknown runtime 'tensorrt'"):
        create_encoder(openclip_model, "tensorrt")
    with pytest.raises(InputError, match="apply to --runtime onnx only"):
        create_encoder(openclip_model, "torch", precision="int8-dynamic")
    assert openclip_model.runtime_info()["runtime"] == "torch"


# --- the build pipeline with the ONNX encoder -------------------------------------------------------------
class _RecordingWriter:
    """Collects what `embed_images` writes (the `ShardWriter` calls it makes)."""

    def __init__(self) -> None:
        self.vectors: list[np.ndarray] = []
        self.ids: list[int] = []
        self.failed: list[int] = []

    def add(self, vectors: np.ndarray, ids: list[int], columns: list[dict]) -> None:
        self.vectors.append(vectors)
        self.ids += ids

    def fail(self, item_id: int, reason: str, size=None, sha256=None) -> None:
        self.failed.append(item_id)

    def close(self) -> None:
        pass


def test_build_pipeline_runs_with_the_onnx_encoder(openclip_model, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    items = []
    for i in range(5):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(36, 44, 3), dtype=np.uint8)).save(path)
        items.append(WorkItem(i, str(path)))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    items.append(WorkItem(5, str(tmp_path / "bad.png")))
    results = {}
    for name, encoder in (
        ("torch", openclip_model),
        ("onnx", OnnxEncoder(openclip_model, cache_dir=tmp_path / "c")),
    ):
        writer = _RecordingWriter()
        embed_images(items, encoder, writer, DecodeOptions(), batch_size=2, workers=1, prefetch_batches=1)
        assert writer.ids == [0, 1, 2, 3, 4] and writer.failed == [5]
        results[name] = np.concatenate(writer.vectors)
    assert np.abs(results["onnx"] - results["torch"]).max() < 1e-5
    # the int8 sample: seeded random draw, in id order, undecodable files skipped, the model's transform
    sample = sample_pixels(items, openclip_model, DecodeOptions(), n=4, seed=0)
    again = sample_pixels(items, openclip_model, DecodeOptions(), n=4, seed=0)
    assert torch.equal(sample, again) and 3 <= len(sample) <= 4
    everything = sample_pixels(items, openclip_model, DecodeOptions(), n=100)
    assert len(everything) == 5  # 6 items, one undecodable
    assert np.abs(openclip_model.encode_images(everything).numpy() - results["torch"]).max() < 1e-5
    with pytest.raises(TypeError, match="preprocess and encode_images"):
        embed_images(
            items, object(), _RecordingWriter(), DecodeOptions(), batch_size=2, workers=0, prefetch_batches=1
        )


# --- the text tower without torch (cold queries) ----------------------------------------------------------
STANDALONE_CHILD = """
import json, sys
from counterclip.models import OnnxTextEncoder
encoder, reason = OnnxTextEncoder.open(json.loads(sys.argv[1]), sys.argv[2], sys.argv[3])
out = encoder.encode_texts(json.loads(sys.argv[4]))
print(json.dumps({"reason": reason, "out": out.tolist(), "dtype": str(out.dtype),
                  "heavy": sorted(m for m in ("torch", "open_clip", "transformers") if m in sys.modules)}))
"""


@pytest.mark.parametrize("which", ["openclip_model", "hf_model"])
def test_text_tower_runs_from_the_cache_without_torch(
    which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    import subprocess
    import sys

    model = request.getfixturevalue(which)
    texts = [*TEXTS, "Fish &amp; chips, naïve café 🐶", "MiXeD   CaSe"]
    OnnxEncoder(model, cache_dir=tmp_path).encode_texts(["warm"])  # exports the text tower
    record = json.loads((tmp_path / model.fingerprint / "text.fp32.json").read_text())
    assert record["standalone"]["tokenizer"]["kind"] == ("hf-fast" if which == "hf_model" else "clip-bpe")
    args = [json.dumps(model.spec.to_dict()), model.fingerprint, str(tmp_path), json.dumps(texts)]
    done = subprocess.run(
        [sys.executable, "-c", STANDALONE_CHILD, *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],  # this checkout's counterclip
        timeout=120,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["reason"] == "" and result["heavy"] == []  # no torch, open_clip or transformers imported
    assert result["dtype"] == "float32"
    assert np.abs(np.asarray(result["out"]) - model.encode_texts(texts).numpy()).max() < 1e-5


def test_clip_bpe_port_matches_open_clip() -> None:
    import open_clip

    from counterclip.models.onnx_text import TOKENIZER_CHECK_TEXTS, ClipBpeTokenizer

    texts = [
        *TOKENIZER_CHECK_TEXTS,
        "  leading and trailing  ",
        "x" * 300,
        "tabs\tand\nnewlines",
        "日本語のテキスト",
    ]
    ours = ClipBpeTokenizer(context_length=77)(texts)
    assert ours.dtype == np.int64
    assert np.array_equal(ours, open_clip.tokenize(texts).numpy())


def test_standalone_is_refused_when_it_cannot_be_trusted(openclip_model, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from counterclip.models.onnx_text import OnnxTextEncoder

    # a copy of the tiny model's files, so they can be changed
    config, weights = (Path(p) for p in str(openclip_model.spec).split(":"))
    local = tmp_path / "m"
    local.mkdir()
    (local / config.name).write_bytes(config.read_bytes())
    (local / weights.name).write_bytes(weights.read_bytes())
    model = load_model(f"{local / config.name}:{local / weights.name}", device="cpu")
    cache = tmp_path / "cache"
    OnnxEncoder(model, cache_dir=cache).encode_texts(["a"])
    encoder, reason = OnnxTextEncoder.open(model.spec, model.fingerprint, cache)
    assert encoder is not None and reason == ""
    assert np.allclose(
        encoder.encode_texts("a red circle"), model.encode_texts("a red circle").numpy(), atol=1e-5
    )
    # another fingerprint: nothing cached
    encoder, reason = OnnxTextEncoder.open(model.spec, "0" * 32, cache)
    assert encoder is None and "no text tower of fingerprint" in reason
    # the weight file changed after the export: loading it would give other weights
    state = load_file(str(local / weights.name))
    state["text_projection"] = state["text_projection"] * 2
    save_file(state, str(local / weights.name))
    encoder, reason = OnnxTextEncoder.open(model.spec, model.fingerprint, cache)
    assert encoder is None and "changed since the export" in reason
    # random weights (no file): exported and usable through torch, but no torch-free entry
    random_model = load_model(str(local / config.name), device="cpu")
    OnnxEncoder(random_model, cache_dir=cache).encode_texts(["a"])
    record = json.loads((cache / random_model.fingerprint / "text.fp32.json").read_text())
    assert record["standalone"] is None and "does not load from local files" in record["standalone_reason"]
    encoder, reason = OnnxTextEncoder.open(random_model.spec, random_model.fingerprint, cache)
    assert encoder is None and "no standalone entry" in reason
