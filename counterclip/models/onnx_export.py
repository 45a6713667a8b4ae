"""Export a tower of a `ClipModel` to ONNX and check it against torch before it is used.

- **Export** (`export_tower`): the TorchScript exporter, opset 17, a dynamic batch axis; with
  ``fused_attention``, `nn.MultiheadAttention`'s fast path is written as three MatMuls and ONNX Runtime's
  ``MultiHeadAttention`` op (`_mha_as_attention`).
- **Checked export** (`export_checked`): the optimised graph first (fused attention, ONNX Runtime's
  transformer fusions and the last layer for the pooled token only, `counterclip.models.onnx_graph`), each
  step checked against torch; a step that fails or misses the bars falls back (the fused graph without the
  narrowing, then the plain export), logged, with the reason recorded.
- **Check** (`check_against_torch`): the export is run on sample inputs at two batch sizes other than the
  traced one and compared with torch; it is refused (`RuntimeExportError`, with the figures) unless every
  embedding has cosine >= 0.9999 to torch's and no coordinate differs by more than 1e-3.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from counterclip.errors import RuntimeExportError
from counterclip.models.base import ClipModel
from counterclip.models.onnx_agreement import Agreement, compare
from counterclip.models.onnx_common import FP32_MIN_COSINE, OPSET
from counterclip.models.onnx_graph import narrow_file, optimize_graph

LOG = logging.getLogger(__name__)

FP32_MAX_ABS = 1e-3  # largest coordinate difference of unit embeddings vs torch
CHECK_TEXTS = (
    "",
    "a photo of a dog",
    "a small red circle on a blue background",
    "two people walking along a beach at sunset, with a lighthouse in the distance and gulls overhead, "
    "photographed on film in the early morning light of a cold winter day near the harbour",
    "ünïcödé, punctuation!? and numbers 1234",
)
GRAPH_FUSED = "fused"  # attention fused at export, then ONNX Runtime's transformer fusions
GRAPH_PLAIN = "plain"  # the TorchScript export as it is (the fallback)
_TRACE_BATCH = 2  # batch size the graph is traced with; the check uses others, so a baked-in batch shows
_MHA_FAST_PATH = "aten::_native_multi_head_attention"


class _Tower(nn.Module):
    """One tower of a `ClipModel` as a module: input -> unit embedding (the model's weights as submodule)."""

    def __init__(self, model: ClipModel, tower: str) -> None:
        super().__init__()
        self.clip = model.module  # registered, so the exporter sees the weights as parameters
        self._features = model.image_features if tower == "image" else model.text_features

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self._features(inputs, normalize=True)


def io_names(tower: str) -> tuple[str, str]:
    """The names of a tower's input and output in its ONNX graph."""
    return ("pixels" if tower == "image" else "tokens"), "embedding"


def check_inputs(
    model: ClipModel, tower: str, sample: torch.Tensor | np.ndarray | None = None
) -> list[torch.Tensor]:
    """Inputs a fresh export is checked on: two batches of sizes other than the traced one (1 and 3).

    Images: seeded random pixels in the normalised range, with up to 3 of the user's ``sample`` images in
    place of the random ones when given. Texts: `CHECK_TEXTS` (empty, short, longer than the context, unicode).
    """
    if tower == "text":
        tokens = model.tokenize(list(CHECK_TEXTS))
        return [tokens[:1], tokens[1:4], tokens[2:]]
    generator = torch.Generator().manual_seed(0)
    h, w = model.vision_geometry.image_size
    pixels = torch.randn(4, 3, h, w, generator=generator)
    if sample is not None and len(sample):
        take = min(3, len(sample))
        pixels[1 : 1 + take] = torch.as_tensor(np.asarray(sample[:take], dtype=np.float32))
    return [pixels[:1], pixels[1:]]


def torch_reference(model: ClipModel, tower: str, inputs: torch.Tensor) -> np.ndarray:
    """The tower's unit embeddings of ``inputs`` computed by torch (what an export must reproduce)."""
    with torch.inference_mode():
        x = inputs.to(model.device)
        out = model.image_features(x.float()) if tower == "image" else model.text_features(x)
    return out.float().cpu().numpy()


# --- tracing ----------------------------------------------------------------------------------------------
def _mha_as_attention(
    g: Any,
    query: Any,
    key: Any,
    value: Any,
    embed_dim: Any,
    num_heads: Any,
    qkv_weight: Any,
    qkv_bias: Any,
    proj_weight: Any,
    proj_bias: Any,
    mask: Any,
    need_weights: Any,
    average_attn_weights: Any,
    mask_type: Any = None,
) -> tuple[Any, Any]:
    """ONNX for `nn.MultiheadAttention`'s fused fast path (unmasked self-attention: ``query is key is value``).

    The Q, K and V projections as three plain MatMuls (slices of the packed weight, folded into three
    weights at export, so int8 quantisation, static or dynamic, reaches them), then ONNX Runtime's
    ``com.microsoft::MultiHeadAttention`` (the packed bias, the split into heads, softmax(QK^T/sqrt(d))V and
    the merge in one kernel), then the output projection.
    """
    from torch.onnx import symbolic_helper

    if not symbolic_helper._is_none(mask):
        raise RuntimeExportError("masked attention has no fused export")
    if symbolic_helper._maybe_get_const(need_weights, "b") is True:
        raise RuntimeExportError("attention that returns its weights has no fused export")
    heads = symbolic_helper._get_const(num_heads, "i", "num_heads")
    width = symbolic_helper._get_const(embed_dim, "i", "embed_dim")

    def const(value: int) -> Any:
        return g.op("Constant", value_t=torch.tensor([value]))

    def projection(i: int) -> Any:  # x @ W_i^T with W_i rows [i*E, (i+1)*E) of the packed (3E, E) weight
        weight = g.op("Slice", qkv_weight, const(i * width), const((i + 1) * width), const(0))
        return g.op("MatMul", query, g.op("Transpose", weight, perm_i=[1, 0]))

    context = g.op(
        "com.microsoft::MultiHeadAttention",
        projection(0),
        projection(1),
        projection(2),
        qkv_bias,
        num_heads_i=heads,
    )
    out = g.op("Add", g.op("MatMul", context, g.op("Transpose", proj_weight, perm_i=[1, 0])), proj_bias)
    return out, g.op("Constant", value_t=torch.zeros(0))  # no attention weights (need_weights=False)


@contextmanager
def _fused_attention(opset: int) -> Iterator[None]:
    """Within the block the TorchScript exporter writes the fast path of `nn.MultiheadAttention` as
    `_mha_as_attention` (the registration is removed on leaving)."""
    torch.onnx.register_custom_op_symbolic(_MHA_FAST_PATH, _mha_as_attention, opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic(_MHA_FAST_PATH, opset)


def export_tower(
    model: ClipModel, tower: str, path: Path, opset: int = OPSET, *, fused_attention: bool = False
) -> None:
    """Export ``tower`` of ``model`` to ``path`` (TorchScript exporter, dynamic batch axis).

    ``fused_attention``: traced without autograd, so each unmasked `nn.MultiheadAttention` (open_clip's
    image towers) takes its fused fast path, written with ONNX Runtime's ``MultiHeadAttention`` op
    (`_mha_as_attention`); other attention
    (masked, Hugging Face's) is traced op by op as usual. Otherwise traced with autograd on, where the fast
    path is never taken (it has no standard ONNX export).
    """
    module = _Tower(model, tower).eval()
    if tower == "image":
        example = torch.zeros(_TRACE_BATCH, 3, *model.vision_geometry.image_size, device=model.device)
    else:
        example = model.tokenize(["a photo", "a photo of a cat"]).to(model.device)
    input_name, output_name = io_names(tower)
    try:
        with (
            warnings.catch_warnings(),
            _fused_attention(opset) if fused_attention else nullcontext(),
            torch.no_grad() if fused_attention else torch.enable_grad(),
        ):
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
            torch.onnx.export(
                module,
                (example,),
                str(path),
                input_names=[input_name],
                output_names=[output_name],
                dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as exc:  # noqa: BLE001 - any exporter failure becomes one line naming the model
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise RuntimeExportError(f"cannot export the {tower} tower of {model.spec} to ONNX: {first}") from exc


def _attention_heads(module: nn.Module) -> tuple[int, int] | None:
    """``(heads, width)`` of an attention layer (`nn.MultiheadAttention`, Hugging Face's, timm's), else None."""
    heads = getattr(module, "num_heads", None) or getattr(module, "num_attention_heads", None)
    width = getattr(module, "embed_dim", None) or getattr(module, "all_head_size", None)
    if not width and isinstance(getattr(module, "head_dim", None), int) and isinstance(heads, int):
        width = heads * module.head_dim
    if isinstance(heads, int) and isinstance(width, int) and heads > 0 and width % heads == 0:
        return heads, width
    return None


def attention_shape(model: ClipModel, tower: str) -> tuple[int, int]:
    """``(heads, width)`` of the attention layers ``tower`` runs (the most frequent), ``(0, 0)`` if none.

    Read from the layers that fire during one forward of the tower (forward hooks, removed after the call):
    the model holds both towers, whose widths differ.
    """
    seen: Counter[tuple[int, int]] = Counter()
    handles = []
    try:
        for module in model.module.modules():
            shape = _attention_heads(module)
            if shape is not None:
                handles.append(module.register_forward_hook(lambda *_, shape=shape: seen.update([shape])))
        torch_reference(model, tower, check_inputs(model, tower)[0])
    finally:
        for handle in handles:
            handle.remove()
    return seen.most_common(1)[0][0] if seen else (0, 0)


# --- the checked export -----------------------------------------------------------------------------------
def check_against_torch(
    model: ClipModel, tower: str, session: Any, sample: np.ndarray | None = None
) -> Agreement:
    """How an exported tower run by ``session`` follows torch on `check_inputs`; refused
    (`RuntimeExportError`, with the figures) when it misses `FP32_MIN_COSINE` or `FP32_MAX_ABS`."""
    name = session.get_inputs()[0].name
    reference, exported = [], []
    for inputs in check_inputs(model, tower, sample):
        reference.append(torch_reference(model, tower, inputs))
        feed = inputs.cpu().numpy().astype(np.float32 if tower == "image" else np.int64)
        exported.append(session.run(None, {name: feed})[0])
    agreement = compare(np.concatenate(reference), np.concatenate(exported))
    if agreement.cosine_min < FP32_MIN_COSINE or agreement.max_abs > FP32_MAX_ABS:
        raise RuntimeExportError(
            f"the ONNX export of the {tower} tower of {model.spec} does not match torch: lowest cosine "
            f"{agreement.cosine_min:.6f} (needs >= {FP32_MIN_COSINE}), max abs difference "
            f"{agreement.max_abs:.2e} (needs <= {FP32_MAX_ABS:.0e}) on {agreement.samples} inputs; "
            "use --runtime torch for this model"
        )
    return agreement


def export_checked(
    model: ClipModel,
    tower: str,
    path: Path,
    open_session: Callable[[Path], Any],
    sample: np.ndarray | None = None,
) -> tuple[Agreement, dict[str, Any]]:
    """Export ``tower`` to ``path`` and check it against torch; -> (agreement, how the graph was made).

    The optimised graph (`GRAPH_FUSED`): attention fused at export (`export_tower` with
    ``fused_attention``), ONNX Runtime's transformer fusions (`optimize_graph`), and the last layer computed
    for the pooled token only (`narrow_to_pooled_token`, where it applies). If the narrowed graph misses
    the bars against torch, the fused graph without it is checked; if any step fails or the fused graph
    misses the bars too, the plain export (`GRAPH_PLAIN`) replaces it. Each fallback is logged with its
    reason, which the record keeps; a plain export that misses the bars is refused (`RuntimeExportError`).
    ``open_session``: path -> an ONNX Runtime session, as the encoder opens them.
    """

    def check(onnx_file: Path) -> Agreement:
        return check_against_torch(model, tower, open_session(onnx_file), sample)

    reasons: list[str] = []
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        try:
            return _export_optimised(model, tower, path, Path(scratch), check, reasons)
        except Exception as exc:  # noqa: BLE001 - any failure of the optimised graph falls back to the plain one
            reasons.append(_fallback(model, tower, "optimised", "plain", exc))
    export_tower(model, tower, path)
    return check(path), {"optimization": GRAPH_PLAIN, **_reason(reasons)}


def _export_optimised(
    model: ClipModel,
    tower: str,
    path: Path,
    scratch: Path,
    check: Callable[[Path], Agreement],
    reasons: list[str],
) -> tuple[Agreement, dict[str, Any]]:
    """The fused graph at ``path``, narrowed to the pooled token when that passes ``check`` (else the
    reason joins ``reasons``); raises when the fused graph fails or misses the bars."""
    heads, width = attention_shape(model, tower)
    traced, fused_path = scratch / "traced.onnx", scratch / "fused.onnx"
    export_tower(model, tower, traced, fused_attention=True)
    fused = optimize_graph(traced, fused_path, num_heads=heads, hidden_size=width)
    graph = {"optimization": GRAPH_FUSED, "fused": fused, "num_heads": heads, "hidden_size": width}
    try:
        narrowed = narrow_file(fused_path, path)
        if narrowed:
            return check(path), {**graph, "pooled_token_only": narrowed}
    except Exception as exc:  # noqa: BLE001 - the fused graph without the narrowing is next
        reasons.append(_fallback(model, tower, "narrowed to the pooled token", "fused", exc))
    shutil.copyfile(fused_path, path)
    return check(path), {**graph, "pooled_token_only": 0, **_reason(reasons)}


def _fallback(model: ClipModel, tower: str, what: str, instead: str, exc: BaseException) -> str:
    """Log that the ``what`` graph of ``tower`` was given up for the ``instead`` one; -> the reason."""
    text = str(exc).strip()
    reason = f"{type(exc).__name__}: {text.splitlines()[0][:600] if text else ''}".rstrip(": ")
    LOG.warning(
        "the %s ONNX graph of the %s tower of %s failed (%s); using the %s graph",
        what,
        tower,
        model.spec,
        reason,
        instead,
    )
    return reason


def _reason(reasons: list[str]) -> dict[str, str]:
    """``{"fallback_reason": ...}`` when something was given up, else ``{}``."""
    return {"fallback_reason": "; ".join(reasons)} if reasons else {}
