"""ONNX Runtime for a loaded `ClipModel`: export each tower once per weights fingerprint, check it against
torch, run it on the CPU; optionally an int8 image tower, accepted only if it passes measured bars.

- **Export**: each tower (``image``: pixels -> unit embedding, ``text``: token ids -> unit embedding) is
  exported with ``torch.onnx.export`` (the TorchScript exporter, opset 17, dynamic batch axis) into
  ``CACHE/<fingerprint>/<tower>.<precision>.onnx`` with a JSON record beside it; both are written atomically
  (temp file in the same directory, fsync, rename), the record last. A tower is exported when it is first
  used, so text-only work (a query) never exports or runs the image tower.
- **Optimised graph** (``graph`` in the record): `nn.MultiheadAttention`'s fast path is written at export
  as three MatMuls and ONNX Runtime's ``MultiHeadAttention`` op; ONNX Runtime's transformer optimizer then
  fuses the rest (layer norms with their residual adds, GELUs with their biases, Hugging Face CLIP's
  attention); and where the tower keeps one token (the class token), its last layer is computed for that
  token only. Each step is checked against torch like the export; a step that fails or misses the bars
  falls back (fused graph without the narrowing, then the plain export), logged, with the reason recorded.
  ViT-B-32 on 2 CPUs: the model alone 1.2-1.3x torch's throughput, against ~1.2x for the plain export.
- **Check**: before it enters the cache, an export is run on sample inputs at two batch sizes other than
  the traced one and compared with torch; it is refused (`RuntimeExportError`, with the figures) unless
  every embedding has cosine >= 0.9999 to torch's and no coordinate differs by more than 1e-3.
- **int8** (image tower): ``int8-dynamic`` (weights int8, activations quantised with one range per batch,
  so an embedding moves slightly with its batch mates; checked at the build's batch size) or
  ``int8-static`` (activations calibrated on a sample of the user's own images through a
  ``CalibrationDataReader``). Accepted only if, on the user's sample, every int8 embedding has cosine
  >= 0.99 to its fp32 one AND an index of the int8 embeddings finds >= 98 % of the fp32 index's 10 nearest
  neighbours (recall@10, each sample image as a query, itself left out); otherwise refused
  (`QuantizationRefusedError`, with the figures). The text tower stays fp32 (queries are one text each).
- **Run**: one ``InferenceSession`` per tower, created on first use and kept; CPU provider; intra-op
  threads settable; idle threads sleep rather than spin (`SESSION_CONFIG`).

- **Without torch**: the text export's record also says how `onnx_text.OnnxTextEncoder` may later run it
  with no torch at all (cold text queries): the SHA-256 of the spec's weight files and a torch-free
  tokenizer that reproduced the model's token ids.

The cache directory is ``$COUNTERCLIP_ONNX_CACHE``, else ``$XDG_CACHE_HOME/counterclip/onnx``, else
``~/.cache/counterclip/onnx``; a ``cache_dir`` argument overrides all of them.

Examples::

    >>> from counterclip.models import load_model
    >>> model = load_model("bundled:shapes", device="cpu")
    >>> encoder = OnnxEncoder(model)
    >>> encoder.encode_texts(["a red circle"]).shape
    torch.Size([1, 128])
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from counterclip.errors import InputError, QuantizationRefusedError, RuntimeExportError
from counterclip.models.base import ClipModel, VisionGeometry
from counterclip.models.onnx_common import (  # noqa: F401 - re-exported
    CACHE_ENV,
    CACHE_FORMAT,
    FP32_MIN_COSINE,
    INT8_MIN_COSINE,
    OPSET,
    PRECISIONS,
    RUNTIMES,
    default_cache_dir,
    onnxruntime_available,
    runtime_record,
    tolerance_cosine,
    unit,
)
from counterclip.models.spec import ModelSpec

LOG = logging.getLogger(__name__)

TOWERS = ("image", "text")
FP32_MAX_ABS = 1e-3  # largest coordinate difference of unit embeddings vs torch
INT8_MIN_RECALL = 0.98  # recall@10 of the int8 index against the fp32 index
RECALL_K = 10
MIN_CHECK_IMAGES = 2 * RECALL_K + 1  # recall@10 over fewer images says little
CHECK_TEXTS = (
    "",
    "a photo of a dog",
    "a small red circle on a blue background",
    "two people walking along a beach at sunset, with a lighthouse in the distance and gulls overhead, "
    "photographed on film in the early morning light of a cold winter day near the harbour",
    "ünïcödé, punctuation!? and numbers 1234",
)
# Session settings. Idle intra-op threads sleep instead of spinning: in the build pipeline the decode
# threads need those cycles (ViT-B-32, 128 JPEGs on 2 loaded CPUs: 4.95 against 4.43 img/s with spinning;
# the model alone: equal, 10.43 against 10.44 img/s).
SESSION_CONFIG = {"session.intra_op.allow_spinning": "0"}
GRAPH_FUSED = "fused"  # attention fused at export, then ONNX Runtime's transformer fusions
GRAPH_PLAIN = "plain"  # the TorchScript export as it is (the fallback)
_TRACE_BATCH = 2  # batch size the graph is traced with; the check uses others, so a baked-in batch shows


def _require_onnxruntime() -> Any:
    if not onnxruntime_available():
        raise RuntimeExportError(
            "the ONNX runtime needs onnxruntime and onnx: pip install 'counterclip[onnx]' (or use --runtime torch)"
        )
    import onnxruntime

    return onnxruntime


# --- measuring agreement ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Agreement:
    """How closely one set of embeddings follows a reference set (row by row)."""

    cosine_min: float  # worst row
    cosine_mean: float
    max_abs: float  # largest coordinate difference
    samples: int  # rows compared

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def compare(reference: np.ndarray, candidate: np.ndarray) -> Agreement:
    """Cosine per row and max abs difference of ``candidate`` ``(n, d)`` against ``reference`` ``(n, d)``."""
    assert reference.shape == candidate.shape, (reference.shape, candidate.shape)
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    cos = (unit(reference) * unit(candidate)).sum(axis=1)
    if not np.isfinite(candidate).all():
        cos = np.where(np.isfinite(cos), cos, -1.0)
    diff = np.abs(reference - candidate)
    return Agreement(
        cosine_min=float(cos.min()),
        cosine_mean=float(cos.mean()),
        max_abs=float(np.nan_to_num(diff, nan=np.inf).max()),
        samples=int(len(reference)),
    )


def recall_at_k(reference: np.ndarray, candidate: np.ndarray, k: int = RECALL_K) -> float:
    """Recall@k of an exact inner-product index of ``candidate`` against one of ``reference``.

    Each row of ``reference`` ``(n, d)`` queries both indexes (the fp32 query a user would send), itself left
    out; the result is the mean share of the reference index's ``k`` nearest neighbours that the candidate
    index also returns in its top ``k``. ``candidate`` ``(n, d)`` holds the same items in the same order.
    """
    assert reference.shape == candidate.shape, (reference.shape, candidate.shape)
    n = len(reference)
    if n <= k:
        raise InputError(f"recall@{k} needs more than {k} items, got {n}")
    queries = unit(reference)
    found = []
    for vectors in (unit(reference), unit(candidate)):
        scores = queries @ vectors.T
        np.fill_diagonal(scores, -np.inf)  # a query is not its own neighbour
        found.append(np.argsort(-scores, axis=1, kind="stable")[:, :k])
    hits = [len(set(a) & set(b)) for a, b in zip(found[0], found[1], strict=True)]
    return float(np.mean(hits) / k)


# --- files ------------------------------------------------------------------------------------------------
def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it is fsynced and renamed over ``path``, else deleted.

    The temp name is unique, so two processes exporting the same tower at once each write their own file
    and the last rename wins (the exports are equal).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with _atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")


def _sha256_array(array: np.ndarray) -> str:
    digest = hashlib.sha256(str((array.shape, str(array.dtype))).encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:32]


class OnnxCache:
    """``ROOT/<fingerprint>/``: one ``<tower>.<precision>.onnx`` and its ``.json`` record per exported tower.

    A record is valid when it names this fingerprint, tower, precision and cache format and its ONNX file
    has the recorded size; anything else is treated as absent (and re-exported).
    """

    def __init__(self, root: Path, fingerprint: str) -> None:
        self.root = Path(root)
        self.fingerprint = fingerprint
        self.directory = self.root / fingerprint

    def onnx_path(self, tower: str, precision: str) -> Path:
        return self.directory / f"{tower}.{precision}.onnx"

    def record_path(self, tower: str, precision: str) -> Path:
        return self.directory / f"{tower}.{precision}.json"

    def read(self, tower: str, precision: str) -> dict[str, Any] | None:
        """The record of a cached tower, or None when it is missing, stale or damaged."""
        path = self.record_path(tower, precision)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        expected = {
            "format": CACHE_FORMAT,
            "fingerprint": self.fingerprint,
            "tower": tower,
            "precision": precision,
        }
        if not isinstance(record, dict) or any(record.get(k) != v for k, v in expected.items()):
            return None
        onnx_file = self.onnx_path(tower, precision)
        if not onnx_file.is_file() or onnx_file.stat().st_size != record.get("bytes"):
            return None
        return record

    def write_record(self, tower: str, precision: str, record: dict[str, Any]) -> dict[str, Any]:
        """Complete and write the record of an ONNX file already in place; returns it."""
        full = {
            "format": CACHE_FORMAT,
            "fingerprint": self.fingerprint,
            "tower": tower,
            "precision": precision,
            "file": self.onnx_path(tower, precision).name,
            "bytes": self.onnx_path(tower, precision).stat().st_size,
            **record,
        }
        _write_json(self.record_path(tower, precision), full)
        return full


# --- export -----------------------------------------------------------------------------------------------
class _Tower(nn.Module):
    """One tower of a `ClipModel` as a module: input -> unit embedding (the model's weights as submodule)."""

    def __init__(self, model: ClipModel, tower: str) -> None:
        super().__init__()
        self.clip = model.module  # registered, so the exporter sees the weights as parameters
        self._features = model.image_features if tower == "image" else model.text_features

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self._features(inputs, normalize=True)


def _io_names(tower: str) -> tuple[str, str]:
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


_MHA_FAST_PATH = "aten::_native_multi_head_attention"


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
    input_name, output_name = _io_names(tower)
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
        _torch_reference(model, tower, check_inputs(model, tower)[0])
    finally:
        for handle in handles:
            handle.remove()
    return seen.most_common(1)[0][0] if seen else (0, 0)


def optimize_graph(source: Path, target: Path, num_heads: int = 0, hidden_size: int = 0) -> dict[str, int]:
    """ONNX Runtime's transformer optimizer on ``source`` -> ``target``; returns the count of each fused op
    in the result (ONNX Runtime's own ops and LayerNormalization), including the attention fused at export.

    ``model_type="clip"`` (BERT's fusions plus CLIP's attention pattern and QuickGelu): LayerNormalization,
    SkipLayerNormalization (residual add + layer norm), BiasGelu / QuickGelu, and attention subgraphs it
    recognises (Hugging Face's CLIP) into ``Attention``; ``num_heads`` / ``hidden_size`` are used where the
    graph does not show them. Python fusions only (``opt_level=0``): the file stays portable, and the
    session applies ONNX Runtime's own optimisations when it loads it.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    chatter = io.StringIO()  # the optimizer prints shape-inference notes to stdout
    with redirect_stdout(chatter), _quiet_loggers():
        optimized = optimize_model(
            str(source), model_type="clip", num_heads=num_heads, hidden_size=hidden_size, opt_level=0
        )
        optimized.save_model_to_file(str(target))
    if chatter.getvalue().strip():
        LOG.debug("ONNX Runtime transformer optimizer: %s", chatter.getvalue().strip())
    fused = Counter(
        node.op_type
        for node in optimized.model.graph.node
        if node.domain == "com.microsoft" or node.op_type == "LayerNormalization"
    )
    return dict(sorted(fused.items()))


# Ops that act on each token on its own (over the last axis), and which of their inputs carry tokens.
# Their other inputs must be constants of rank <= 1 (gains, biases) or 2-D weights (MatMul's second input).
_TOKENWISE_INPUTS = {
    "MatMul": (0,),
    "Add": (0, 1),
    "Mul": (0, 1),
    "LayerNormalization": (0,),
    "SkipLayerNormalization": (0, 1),
    "BiasGelu": (0,),
    "FastGelu": (0,),
    "Gelu": (0,),
    "QuickGelu": (0,),
    "MultiHeadAttention": (0,),  # the queries only: every token's keys and values are still needed
}


def narrow_to_pooled_token(model: Any) -> int:
    """Compute only the pooled token where nothing else is used (in place); -> the number of nodes narrowed.

    A ViT tower keeps one token of its last layer (``Gather(axis=1, index 0)``: the class token of open_clip
    and Hugging Face CLIP). Walking back from that Gather, every token-wise node (`_TOKENWISE_INPUTS`) whose
    outputs feed only narrowed inputs is narrowed: its token inputs are sliced to the first token. In the last
    block that is the query projection, the attention for one query, the output projection and the MLP,
    about 10/12 of a layer; keys and values stay whole. The result is the same computation for the token
    that is kept (checked against torch like every export). No such Gather (text towers pool by position,
    SigLIP by attention): nothing changes.
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    nodes = list(graph.node)
    initializers = {t.name: t for t in graph.initializer}
    constants = {n.output[0]: n for n in nodes if n.op_type == "Constant" and len(n.output) == 1}

    def constant_value(name: str) -> np.ndarray | None:
        if name in initializers:
            return numpy_helper.to_array(initializers[name])
        node = constants.get(name)
        if node is not None and node.attribute and node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    def attribute(node: Any, name: str, default: Any) -> Any:
        found = [a for a in node.attribute if a.name == name]
        return helper.get_attribute_value(found[0]) if found else default

    pooled = [
        n
        for n in nodes
        if n.op_type == "Gather"
        and attribute(n, "axis", 0) == 1
        and (index := constant_value(n.input[1])) is not None
        and index.ndim == 0
        and int(index) == 0
    ]
    if len(pooled) != 1:
        return 0
    gather = pooled[0]
    consumers: dict[str, list[tuple[int, int]]] = {}  # tensor -> [(node position, input slot)]
    for position, node in enumerate(nodes):
        for slot, name in enumerate(node.input):
            consumers.setdefault(name, []).append((position, slot))
    graph_outputs = {o.name for o in graph.output}

    def token_slots(node: Any) -> tuple[int, ...] | None:
        """The inputs of ``node`` to narrow if it acts on each token on its own, else None."""
        slots = _TOKENWISE_INPUTS.get(node.op_type)
        if slots is None or node.domain not in ("", "com.microsoft"):
            return None
        if node.op_type == "LayerNormalization" and attribute(node, "axis", -1) != -1:
            return None
        if node.op_type == "MultiHeadAttention" and (len(node.input) < 3 or any(node.input[4:])):
            return None  # packed QKV, masks or past state
        tokens = []
        for slot, name in enumerate(node.input):
            if not name or (node.op_type == "MultiHeadAttention" and slot in (1, 2)):
                continue  # absent inputs, and the keys and values (used whole)
            value = constant_value(name)
            if value is None and slot in slots:
                tokens.append(slot)
            elif value is None or value.ndim > (2 if node.op_type == "MatMul" and slot == 1 else 1):
                return None  # another activation, or a constant that differs per token
        return tuple(tokens) or None

    gather_position = nodes.index(gather)
    narrowed = {gather_position: (0,)}  # position -> its narrowed input slots
    for position in range(gather_position - 1, -1, -1):
        node = nodes[position]
        slots = token_slots(node)
        if slots is None:
            continue
        uses = [use for out in node.output if out for use in consumers.get(out, [])]
        if any(out in graph_outputs for out in node.output) or not uses:
            continue
        if all(slot in narrowed.get(user, ()) for user, slot in uses):
            narrowed[position] = slots
    if len(narrowed) == 1:
        return 0
    first = "narrow_to_pooled_token_first"
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([0], np.int64), f"{first}_starts"),
            numpy_helper.from_array(np.array([1], np.int64), f"{first}_ends"),
            numpy_helper.from_array(np.array([1], np.int64), f"{first}_axes"),
        ]
    )
    producers = {out: position for position, node in enumerate(nodes) for out in node.output if out}
    first_use: dict[str, int] = {}  # a token input from outside the narrowed part -> its first narrowed user
    for position, slots in narrowed.items():
        if position == gather_position:
            continue
        node = nodes[position]
        for slot in slots:
            name = node.input[slot] if slot < len(node.input) else ""
            if name and producers.get(name) not in narrowed:
                first_use[name] = min(first_use.get(name, position), position)
                node.input[slot] = f"{name}_first_token"
    inserts: dict[int, list[Any]] = {}  # position -> the Slice nodes placed before it
    for name, position in first_use.items():
        inputs = [name, f"{first}_starts", f"{first}_ends", f"{first}_axes"]
        slice_node = helper.make_node("Slice", inputs, [f"{name}_first_token"], name=f"{name}_first_token")
        inserts.setdefault(position, []).append(slice_node)
    ordered = []
    for position, node in enumerate(nodes):
        ordered.extend(inserts.get(position, []))
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    onnx.checker.check_model(model)
    return len(narrowed) - 1


@contextmanager
def _quiet_loggers() -> Iterator[None]:
    """The transformer optimizer's modules (imported by their bare names, so their loggers are too) log
    a warning per fusion they cannot apply: raised to ERROR for the block, then restored."""
    import onnxruntime.transformers

    names = {path.stem for path in Path(onnxruntime.transformers.__file__).parent.glob("*.py")}
    loggers = [logging.getLogger(name) for name in sorted(names) if name in logging.root.manager.loggerDict]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _torch_reference(model: ClipModel, tower: str, inputs: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        x = inputs.to(model.device)
        out = model.image_features(x.float()) if tower == "image" else model.text_features(x)
    return out.float().cpu().numpy()


def _narrow_file(source: Path, target: Path) -> int:
    """`narrow_to_pooled_token` of the ONNX file ``source``, written to ``target`` when something narrowed;
    -> the number of nodes narrowed."""
    import onnx

    model = onnx.load(str(source))
    narrowed = narrow_to_pooled_token(model)
    if narrowed:
        onnx.save(model, str(target))
    return narrowed


def _reason(reasons: list[str]) -> dict[str, str]:
    """``{"fallback_reason": ...}`` when something was given up, else ``{}``."""
    return {"fallback_reason": "; ".join(reasons)} if reasons else {}


# --- quantisation -----------------------------------------------------------------------------------------
def _pixel_reader(input_name: str, pixels: np.ndarray, batch_size: int = 8) -> Any:
    """A ``CalibrationDataReader`` over preprocessed pixels ``(n, 3, H, W)``, in batches."""
    from onnxruntime.quantization import CalibrationDataReader

    class PixelReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([pixels[i : i + batch_size] for i in range(0, len(pixels), batch_size)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    return PixelReader()


def _prepare_for_quantization(source: Path, target: Path) -> Path:
    """``source`` pre-processed for the quantiser into ``target`` (symbolic shape inference first, then ONNX's
    own); -> the path to quantise (``source`` itself when both fail)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    failures = []
    for skip_symbolic in (False, True):
        try:
            with redirect_stdout(io.StringIO()):
                quant_pre_process(str(source), str(target), skip_symbolic_shape=skip_symbolic)
            return target
        except Exception as exc:  # noqa: BLE001 - pre-processing is an optimisation; try the next way
            failures.append(f"{type(exc).__name__}: {str(exc)[:200]}")
    LOG.info("quantisation pre-processing skipped (%s)", "; ".join(failures))
    return source


def _kept_fp32(path: Path, stem: bool) -> list[str]:
    """Names of the nodes of the ONNX file ``path`` that int8 leaves fp32: the last MatMul (the output
    projection) and, with ``stem``, the first Conv (see `_quantize`)."""
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    matmuls = [n.name for n in nodes if n.op_type == "MatMul" and n.name]
    convs = [n.name for n in nodes if n.op_type == "Conv" and n.name]
    return matmuls[-1:] + (convs[:1] if stem else [])


def _quantize(fp32_path: Path, out_path: Path, precision: str, calibration: np.ndarray | None) -> list[str]:
    """Write the int8 model of ``fp32_path`` to ``out_path``; -> the names of the nodes kept fp32.

    Dynamic: int8 weights of MatMul/Gemm (and of a fused ``Attention`` op's QKV projection), activations
    quantised per batch at run time. Static (QDQ): int8 weights of MatMul/Gemm/Conv per channel, activation
    ranges from ``calibration`` (min-max). In a `GRAPH_FUSED` graph the Q, K, V projections are plain
    MatMuls (`_mha_as_attention`), so both reach them. ``reduce_range`` (7-bit weights) avoids the
    saturation of the u8 x s8 instruction on CPUs without VNNI.

    The graph is first pre-processed (`quant_pre_process`: shape inference, ONNX Runtime's basic graph
    optimisations), with symbolic shape inference where it succeeds: only it knows the shapes of ONNX
    Runtime's own ops (MultiHeadAttention, SkipLayerNormalization), which the quantiser needs.

    Kept fp32 (`_kept_fp32`): the output projection (the last MatMul), which runs once per image after
    pooling, so int8 saves nothing there while its error goes straight into the embedding; for static,
    also the input stem (the first Conv: the patch embedding), whose error every layer carries. Measured
    (ViT-B-32, random weights, 256 photos against fp32): dynamic recall@10 0.977 -> 0.987 (lowest cosine
    0.99965 -> 0.99987), static 0.971 -> 0.982 (0.99950 -> 0.99973), at the same speed within noise.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    with tempfile.TemporaryDirectory(dir=out_path.parent) as scratch:
        prepared = _prepare_for_quantization(fp32_path, Path(scratch) / "prepared.onnx")
        kept = _kept_fp32(prepared, stem=precision == "int8-static")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if precision == "int8-dynamic":
                quantize_dynamic(
                    str(prepared),
                    str(out_path),
                    op_types_to_quantize=["MatMul", "Gemm", "Attention"],
                    nodes_to_exclude=kept,
                    per_channel=True,
                    reduce_range=True,
                    weight_type=QuantType.QInt8,
                )
            else:
                assert calibration is not None
                input_name = _io_names("image")[0]
                quantize_static(
                    str(prepared),
                    str(out_path),
                    _pixel_reader(input_name, calibration),
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["MatMul", "Gemm", "Conv"],
                    nodes_to_exclude=kept,
                    per_channel=True,
                    reduce_range=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                )
    return kept


# --- the encoder ------------------------------------------------------------------------------------------
class OnnxEncoder:
    """A `ClipModel`'s towers run by ONNX Runtime, with the same encode API (an `Encoder`).

    Args:
        model: the loaded torch model (its fingerprint keys the cache; it is used to export and check, and
            stays available as ``torch_model`` for gradient work).
        precision: image tower precision: ``fp32``, ``int8-dynamic`` or ``int8-static``. The text tower is
            always fp32. Default: ``fp32``.
        sample: int8 only: preprocessed pixels ``(n, 3, H, W)`` of the user's own images, n >= 21; the
            int8 tower is checked on them (and ``int8-static`` calibrated on the first
            ``calibration_size``). Without it, an int8 tower accepted before (on any sample) is reused from
            the cache, and if there is none the encoder refuses. Default: None.
        cache_dir: cache root. Default: `default_cache_dir()`.
        threads: intra-op threads per session (0 lets ONNX Runtime choose). Default: 0.
        calibration_size: images of ``sample`` used to calibrate ``int8-static``. Default: 64.
        check_batch_size: batch size of the int8 check. ``int8-dynamic`` quantises activations with one
            range per batch, so an image's embedding moves slightly with its batch mates: check at the
            batch size the build uses. Default: 64 (the build's default).
        min_cosine: int8 bar: the lowest cosine of an int8 embedding to its fp32 one. Default: 0.99.
        min_recall: int8 bar: recall@10 of the int8 index against the fp32 index. Default: 0.98.

    Raises:
        RuntimeExportError: onnxruntime missing, an export that fails or does not match torch.
        QuantizationRefusedError: an int8 tower that misses a bar (the message gives the figures).

    Sessions are created on first use of their tower and kept: text-only use never exports the image tower.
    """

    def __init__(
        self,
        model: ClipModel,
        *,
        precision: str = "fp32",
        sample: torch.Tensor | np.ndarray | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        threads: int = 0,
        calibration_size: int = 64,
        check_batch_size: int = 64,
        min_cosine: float = INT8_MIN_COSINE,
        min_recall: float = INT8_MIN_RECALL,
    ) -> None:
        self._ort = _require_onnxruntime()
        if precision not in PRECISIONS:
            raise InputError(f"unknown ONNX precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
        if threads < 0:
            raise InputError(f"threads must be >= 0 (0 = let ONNX Runtime choose), got {threads}")
        self.torch_model = model
        self.spec: ModelSpec = model.spec
        self.embed_dim: int = model.embed_dim
        self.context_length: int = model.context_length
        self.precision = precision
        self.threads = int(threads)
        self.calibration_size = int(calibration_size)
        self.check_batch_size = int(check_batch_size)
        self.min_cosine = float(min_cosine)
        self.min_recall = float(min_recall)
        self.sample = None if sample is None else self._check_sample(sample)
        self.cache = OnnxCache(
            Path(cache_dir).expanduser() if cache_dir else default_cache_dir(), model.fingerprint
        )
        self._sessions: dict[str, Any] = {}
        self._records: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()  # one export / session per tower, also when threads share the encoder
        # "<tower>.<precision>" files this encoder wrote (not read from the cache)
        self.exported: list[str] = []

    # --- what the pipeline and the engine use ----------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return self.torch_model.fingerprint

    @property
    def logit_scale(self) -> float:
        return self.torch_model.logit_scale

    @property
    def pair_score(self):  # noqa: ANN201 - counterclip.scores.PairScore: the torch model's, one score
        return self.torch_model.pair_score

    @property
    def calibration(self):  # noqa: ANN201 - the calibration shipped with the weights, if any
        return getattr(self.torch_model, "calibration", None)

    @property
    def vision_geometry(self) -> VisionGeometry:
        return self.torch_model.vision_geometry

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.torch_model.preprocess(image)

    def preprocess_batch(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.torch_model.preprocess_batch(images)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.torch_model.tokenize(texts)

    def score(
        self, image_emb: torch.Tensor | np.ndarray, text_emb: torch.Tensor | np.ndarray
    ) -> torch.Tensor:
        return self.torch_model.score(image_emb, text_emb)

    def encode_images(self, pixels: torch.Tensor | np.ndarray, batch_size: int = 64) -> torch.Tensor:
        """Embed preprocessed images ``(n, 3, H, W)`` (or one ``(3, H, W)``) -> float32 CPU ``(n, d)`` / ``(d,)``."""
        array = (
            pixels.detach().to("cpu", torch.float32).numpy()
            if torch.is_tensor(pixels)
            else np.asarray(pixels)
        )
        single = array.ndim == 3
        out = self._run("image", array[None] if single else array.astype(np.float32, copy=False), batch_size)
        return out[0] if single else out

    def encode_texts(self, texts: str | Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Embed texts: a list gives ``(n, d)``, a single string ``(d,)``; float32 CPU, L2-normalised."""
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        tokens = (
            self.tokenize(items).numpy().astype(np.int64, copy=False) if items else np.zeros((0, 1), np.int64)
        )
        out = self._run("text", tokens, batch_size)
        return out[0] if single else out

    def encode_pil(self, images: Sequence[Image.Image], batch_size: int = 64) -> torch.Tensor:
        return self.encode_images(self.preprocess_batch(images), batch_size=batch_size)

    def runtime_info(self) -> dict[str, Any]:
        """Runtime, version, providers, opset, threads, precisions, and per loaded tower the measured agreement.

        ``towers`` holds the towers used so far (a text-only encoder reports only ``text``): for fp32 the
        cosine / max abs difference to torch; for int8 also its figures against fp32 (cosine, recall@10,
        images checked and calibrated on).
        """
        towers = {}
        for tower, record in sorted(self._records.items()):
            towers[tower] = {
                "precision": record["precision"],
                "file": str(self.cache.onnx_path(tower, record["precision"])),
                "vs_torch": record["vs_torch"],
                "graph": record.get("graph"),
                **({"vs_fp32": record["vs_fp32"]} if "vs_fp32" in record else {}),
            }
        providers = sorted({p for s in self._sessions.values() for p in s.get_providers()}) or [
            "CPUExecutionProvider"
        ]
        return {
            "runtime": "onnxruntime",
            "version": self._ort.__version__,
            "providers": providers,
            "opset": OPSET,
            "threads": self.threads,
            "session_config": dict(SESSION_CONFIG),
            "precision": {"image": self.precision, "text": "fp32"},
            "cache": str(self.cache.directory),
            "towers": towers,
        }

    @property
    def tolerance_cosine(self) -> float:
        """The cosine to torch fp32 its image embeddings are accepted at (export bar, and int8 bar)."""
        return tolerance_cosine(self.precision, self.min_cosine)

    def manifest_record(self) -> dict[str, Any]:
        """`runtime_info` reduced to what an index records (`counterclip.models.onnx_common.runtime_record`)."""
        return runtime_record(self.runtime_info(), "", self.tolerance_cosine)

    def __repr__(self) -> str:
        return (
            f"OnnxEncoder(spec={str(self.spec)!r}, precision={self.precision}, cache={self.cache.directory})"
        )

    # --- sessions ---------------------------------------------------------------------------------------
    def _run(self, tower: str, inputs: np.ndarray, batch_size: int) -> torch.Tensor:
        if len(inputs) == 0:
            return torch.empty(0, self.embed_dim)
        session = self.session(tower)
        name = session.get_inputs()[0].name
        chunks = [
            session.run(None, {name: inputs[i : i + batch_size]})[0]
            for i in range(0, len(inputs), batch_size)
        ]
        return torch.from_numpy(unit(np.concatenate(chunks)))

    def session(self, tower: str) -> Any:
        """The tower's ``InferenceSession`` (exported, checked and created on first call, then kept)."""
        if tower not in TOWERS:
            raise InputError(f"unknown tower {tower!r}; expected image or text")
        with self._lock:
            if tower not in self._sessions:
                record = self._ensure(tower)
                path = self.cache.onnx_path(tower, record["precision"])
                self._sessions[tower] = self._new_session(path)
                self._records[tower] = record
            return self._sessions[tower]

    def _new_session(self, path: Path) -> Any:
        ort = self._ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        for key, value in SESSION_CONFIG.items():
            options.add_session_config_entry(key, value)
        options.log_severity_level = 3
        try:
            return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - a damaged file names itself
            raise RuntimeExportError(
                f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0][:200]}; delete it to re-export"
            ) from exc

    def _ensure(self, tower: str) -> dict[str, Any]:
        """The cache record of the tower at the precision asked, exporting / quantising it if needed."""
        record = self._ensure_fp32(tower)
        if tower == "image" and self.precision != "fp32":
            record = self._ensure_int8()
        return record

    def _ensure_fp32(self, tower: str) -> dict[str, Any]:
        cached = self.cache.read(tower, "fp32")
        if cached is not None:
            LOG.debug("ONNX %s tower of %s from the cache %s", tower, self.spec, self.cache.directory)
            return cached
        started = time.perf_counter()
        target = self.cache.onnx_path(tower, "fp32")
        with _atomic_path(target) as tmp:
            agreement, graph = self._export_checked(tower, tmp)
        extra: dict[str, Any] = {}
        if tower == "text":  # what lets OnnxTextEncoder run this tower later without torch
            from counterclip.models.onnx_text import standalone_entry

            entry, reason = standalone_entry(self.torch_model, self.cache.directory)
            extra = {"standalone": entry} if entry else {"standalone": None, "standalone_reason": reason}
        record = self.cache.write_record(
            tower,
            "fp32",
            {
                **extra,
                "opset": OPSET,
                "spec": self.spec.to_dict(),
                "torch": torch.__version__,
                "onnxruntime": self._ort.__version__,
                "input": {"name": _io_names(tower)[0], "batch": "dynamic"},
                "graph": graph,
                "vs_torch": {
                    **agreement.to_dict(),
                    "min_cosine_bar": FP32_MIN_COSINE,
                    "max_abs_bar": FP32_MAX_ABS,
                },
                "seconds": round(time.perf_counter() - started, 2),
            },
        )
        self.exported.append(f"{tower}.fp32")
        LOG.info(
            "exported the %s tower of %s to %s in %.1f s (%s graph; cosine to torch >= %.6f, max abs %.2e)",
            tower,
            self.spec,
            target,
            record["seconds"],
            graph["optimization"],
            agreement.cosine_min,
            agreement.max_abs,
        )
        return record

    def _export_checked(self, tower: str, path: Path) -> tuple[Agreement, dict[str, Any]]:
        """Export ``tower`` to ``path`` and check it against torch; -> (agreement, how the graph was made).

        The optimised graph (`GRAPH_FUSED`): attention fused at export (`export_tower` with
        ``fused_attention``), ONNX Runtime's transformer fusions (`optimize_graph`), and the last layer computed
        for the pooled token only (`narrow_to_pooled_token`, where it applies). If the narrowed graph misses
        the bars against torch, the fused graph without it is checked; if any step fails or the fused graph
        misses the bars too, the plain export (`GRAPH_PLAIN`) replaces it. Each fallback is logged with its
        reason, which the record keeps; a plain export that misses the bars is refused (`RuntimeExportError`).
        """
        reasons: list[str] = []
        with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
            try:
                heads, width = attention_shape(self.torch_model, tower)
                traced, fused_path = Path(scratch) / "traced.onnx", Path(scratch) / "fused.onnx"
                export_tower(self.torch_model, tower, traced, fused_attention=True)
                fused = optimize_graph(traced, fused_path, num_heads=heads, hidden_size=width)
                graph = {
                    "optimization": GRAPH_FUSED,
                    "fused": fused,
                    "num_heads": heads,
                    "hidden_size": width,
                }
                try:
                    narrowed = _narrow_file(fused_path, path)
                    if narrowed:
                        agreement = self._check_against_torch(tower, self._new_session(path))
                        return agreement, {**graph, "pooled_token_only": narrowed}
                except Exception as exc:  # noqa: BLE001 - the fused graph without the narrowing is next
                    reasons.append(self._fallback(tower, "narrowed to the pooled token", "fused", exc))
                shutil.copyfile(fused_path, path)
                agreement = self._check_against_torch(tower, self._new_session(path))
                return agreement, {**graph, "pooled_token_only": 0, **_reason(reasons)}
            except Exception as exc:  # noqa: BLE001 - any failure of the optimised graph falls back to the plain one
                reasons.append(self._fallback(tower, "optimised", "plain", exc))
        export_tower(self.torch_model, tower, path)
        agreement = self._check_against_torch(tower, self._new_session(path))
        return agreement, {"optimization": GRAPH_PLAIN, **_reason(reasons)}

    def _fallback(self, tower: str, what: str, instead: str, exc: BaseException) -> str:
        """Log that the ``what`` graph of ``tower`` was given up for the ``instead`` one; -> the reason."""
        text = str(exc).strip()
        reason = f"{type(exc).__name__}: {text.splitlines()[0][:600] if text else ''}".rstrip(": ")
        LOG.warning(
            "the %s ONNX graph of the %s tower of %s failed (%s); using the %s graph",
            what,
            tower,
            self.spec,
            reason,
            instead,
        )
        return reason

    def _check_against_torch(self, tower: str, session: Any) -> Agreement:
        name = session.get_inputs()[0].name
        reference, exported = [], []
        for inputs in check_inputs(self.torch_model, tower, self.sample):
            reference.append(_torch_reference(self.torch_model, tower, inputs))
            feed = inputs.cpu().numpy().astype(np.float32 if tower == "image" else np.int64)
            exported.append(session.run(None, {name: feed})[0])
        agreement = compare(np.concatenate(reference), np.concatenate(exported))
        if agreement.cosine_min < FP32_MIN_COSINE or agreement.max_abs > FP32_MAX_ABS:
            raise RuntimeExportError(
                f"the ONNX export of the {tower} tower of {self.spec} does not match torch: lowest cosine "
                f"{agreement.cosine_min:.6f} (needs >= {FP32_MIN_COSINE}), max abs difference "
                f"{agreement.max_abs:.2e} (needs <= {FP32_MAX_ABS:.0e}) on {agreement.samples} inputs; "
                "use --runtime torch for this model"
            )
        return agreement

    # --- int8 ---------------------------------------------------------------------------------------------
    def _check_sample(self, sample: torch.Tensor | np.ndarray) -> np.ndarray:
        array = (
            sample.detach().to("cpu", torch.float32).numpy()
            if torch.is_tensor(sample)
            else np.asarray(sample)
        )
        h, w = self.torch_model.vision_geometry.image_size
        if array.ndim != 4 or array.shape[1:] != (3, h, w):
            raise InputError(
                f"the int8 sample must be preprocessed pixels of shape (n, 3, {h}, {w}), got {tuple(array.shape)}"
            )
        if len(array) < MIN_CHECK_IMAGES:
            raise InputError(
                f"the int8 check needs at least {MIN_CHECK_IMAGES} of your images (recall@{RECALL_K}), "
                f"got {len(array)}; use fp32 for a smaller collection"
            )
        return np.ascontiguousarray(array, dtype=np.float32)

    def _ensure_int8(self) -> dict[str, Any]:
        precision = self.precision
        cached = self.cache.read("image", precision)
        if self.sample is None:
            if cached is None:
                what = "calibrate and check" if precision == "int8-static" else "check"
                raise RuntimeExportError(
                    f"{precision} needs a sample of your own images to {what} it against fp32, and no accepted "
                    f"{precision} image tower is cached in {self.cache.directory}; build or update the index "
                    f"with --runtime onnx --precision {precision} first (it checks it on your images), or use fp32"
                )
            return cached
        sample_hash = _sha256_array(self.sample)
        if cached is not None and self._accepted_before(cached, sample_hash):
            return cached
        started = time.perf_counter()
        calibration = self.sample[: self.calibration_size] if precision == "int8-static" else None
        target = self.cache.onnx_path("image", precision)
        fp32_session = self._new_session(self.cache.onnx_path("image", "fp32"))
        reference = self._run_session(fp32_session, self.sample, self.check_batch_size)
        with _atomic_path(target) as tmp:
            kept = _quantize(self.cache.onnx_path("image", "fp32"), tmp, precision, calibration)
            candidate = self._run_session(self._new_session(tmp), self.sample, self.check_batch_size)
            agreement = compare(reference, candidate)
            recall = recall_at_k(reference, candidate, RECALL_K)
            figures = (
                f"lowest cosine to fp32 {agreement.cosine_min:.4f} (mean {agreement.cosine_mean:.4f}, needs >= "
                f"{self.min_cosine}), recall@{RECALL_K} against the fp32 index {recall:.3f} (needs >= "
                f"{self.min_recall}) on {len(self.sample)} of your images"
            )
            if agreement.cosine_min < self.min_cosine or recall < self.min_recall:
                raise QuantizationRefusedError(
                    f"{precision} image tower of {self.spec} refused: {figures}; use fp32 (int8 is too lossy here)"
                )
        fp32_record = self.cache.read("image", "fp32") or {}
        record = self.cache.write_record(
            "image",
            precision,
            {
                "opset": OPSET,
                "spec": self.spec.to_dict(),
                "onnxruntime": self._ort.__version__,
                "vs_torch": fp32_record["vs_torch"],
                "graph": fp32_record.get("graph"),  # the fp32 graph that was quantised
                "kept_fp32": kept,  # its nodes left fp32 (see _quantize)
                "vs_fp32": {
                    **agreement.to_dict(),
                    f"recall_at_{RECALL_K}": recall,
                    "min_cosine_bar": self.min_cosine,
                    "min_recall_bar": self.min_recall,
                    "check_images": len(self.sample),
                    "calibration_images": 0 if calibration is None else len(calibration),
                    "batch_size": self.check_batch_size,
                    "sample_sha256": sample_hash,
                },
                "seconds": round(time.perf_counter() - started, 2),
            },
        )
        self.exported.append(f"image.{precision}")
        LOG.info("%s image tower of %s accepted: %s", precision, self.spec, figures)
        return record

    def _accepted_before(self, record: dict[str, Any], sample_hash: str) -> bool:
        """True when ``record`` was checked on this very sample against bars at least as strict as ours."""
        check = record.get("vs_fp32", {})
        return (
            check.get("sample_sha256") == sample_hash
            and check.get("min_cosine_bar", -1) >= self.min_cosine
            and check.get("min_recall_bar", -1) >= self.min_recall
            and check.get("batch_size") == self.check_batch_size
            and check.get("calibration_images")
            == (min(self.calibration_size, len(self.sample)) if self.precision == "int8-static" else 0)
        )

    def _run_session(self, session: Any, pixels: np.ndarray, batch_size: int) -> np.ndarray:
        name = session.get_inputs()[0].name
        out = [
            session.run(None, {name: pixels[i : i + batch_size]})[0]
            for i in range(0, len(pixels), batch_size)
        ]
        return unit(np.concatenate(out))


def create_encoder(
    model: ClipModel,
    runtime: str = "torch",
    **onnx_options: Any,
) -> ClipModel | OnnxEncoder:
    """``runtime="torch"`` -> ``model`` itself; ``"onnx"`` -> an `OnnxEncoder` over it (``onnx_options`` go to it).

    Examples::

        >>> encoder = create_encoder(model, "onnx", precision="int8-dynamic", sample=pixels)
    """
    if runtime == "torch":
        if onnx_options:
            raise InputError(f"options {sorted(onnx_options)} apply to --runtime onnx only")
        return model
    if runtime == "onnx":
        return OnnxEncoder(model, **onnx_options)
    raise InputError(f"unknown runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}")
