"""Graph surgery on an exported tower: ONNX Runtime's transformer fusions (`optimize_graph`), and the last
layer computed for the pooled token only (`narrow_to_pooled_token`).

Each step leaves the computation of the kept embedding the same; `counterclip.models.onnx_export` checks
the result against torch like any export and falls back when a step fails or misses the bars.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np

LOG = logging.getLogger(__name__)


# --- ONNX Runtime's transformer optimizer -----------------------------------------------------------------
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


# --- the last layer for the pooled token only -------------------------------------------------------------
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
_FIRST = "narrow_to_pooled_token_first"  # prefix of the Slice bounds added to the graph


class _Constants:
    """The constant tensors of a graph by name: its initializers and the outputs of its Constant nodes."""

    def __init__(self, graph: Any) -> None:
        self._initializers = {t.name: t for t in graph.initializer}
        self._nodes = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and len(n.output) == 1}

    def value(self, name: str) -> np.ndarray | None:
        """The tensor called ``name`` as an array, or None when it is not a constant."""
        from onnx import numpy_helper

        if name in self._initializers:
            return numpy_helper.to_array(self._initializers[name])
        node = self._nodes.get(name)
        if node is not None and node.attribute and node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t)
        return None


def _attribute(node: Any, name: str, default: Any) -> Any:
    """The value of ``node``'s attribute ``name``, or ``default`` when it has none."""
    from onnx import helper

    found = [a for a in node.attribute if a.name == name]
    return helper.get_attribute_value(found[0]) if found else default


def _pooled_gather(nodes: list[Any], constants: _Constants) -> Any | None:
    """The one ``Gather(axis=1, index 0)`` that keeps the first token, or None (none, or several)."""
    pooled = [
        n
        for n in nodes
        if n.op_type == "Gather"
        and _attribute(n, "axis", 0) == 1
        and (index := constants.value(n.input[1])) is not None
        and index.ndim == 0
        and int(index) == 0
    ]
    return pooled[0] if len(pooled) == 1 else None


def _token_slots(node: Any, constants: _Constants) -> tuple[int, ...] | None:
    """The inputs of ``node`` to narrow if it acts on each token on its own, else None."""
    slots = _TOKENWISE_INPUTS.get(node.op_type)
    if slots is None or node.domain not in ("", "com.microsoft"):
        return None
    if node.op_type == "LayerNormalization" and _attribute(node, "axis", -1) != -1:
        return None
    if node.op_type == "MultiHeadAttention" and (len(node.input) < 3 or any(node.input[4:])):
        return None  # packed QKV, masks or past state
    tokens = []
    for slot, name in enumerate(node.input):
        if not name or (node.op_type == "MultiHeadAttention" and slot in (1, 2)):
            continue  # absent inputs, and the keys and values (used whole)
        value = constants.value(name)
        if value is None and slot in slots:
            tokens.append(slot)
        elif value is None or value.ndim > (2 if node.op_type == "MatMul" and slot == 1 else 1):
            return None  # another activation, or a constant that differs per token
    return tuple(tokens) or None


def _narrowable(
    graph: Any, nodes: list[Any], gather_position: int, constants: _Constants
) -> dict[int, tuple]:
    """Node position -> its input slots to narrow: walking back from the Gather, every token-wise node whose
    outputs feed only narrowed inputs (and no graph output). The Gather itself is in it, with slot 0."""
    consumers: dict[str, list[tuple[int, int]]] = {}  # tensor -> [(node position, input slot)]
    for position, node in enumerate(nodes):
        for slot, name in enumerate(node.input):
            consumers.setdefault(name, []).append((position, slot))
    graph_outputs = {o.name for o in graph.output}
    narrowed = {gather_position: (0,)}
    for position in range(gather_position - 1, -1, -1):
        node = nodes[position]
        slots = _token_slots(node, constants)
        if slots is None:
            continue
        uses = [use for out in node.output if out for use in consumers.get(out, [])]
        if any(out in graph_outputs for out in node.output) or not uses:
            continue
        if all(slot in narrowed.get(user, ()) for user, slot in uses):
            narrowed[position] = slots
    return narrowed


def _slice_first_tokens(
    graph: Any, nodes: list[Any], narrowed: dict[int, tuple], gather_position: int
) -> None:
    """Feed the narrowed nodes the first token of each input that comes from outside the narrowed part: one
    ``Slice`` per such input, placed before its first narrowed user (the graph's nodes are rewritten)."""
    from onnx import helper, numpy_helper

    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([0], np.int64), f"{_FIRST}_starts"),
            numpy_helper.from_array(np.array([1], np.int64), f"{_FIRST}_ends"),
            numpy_helper.from_array(np.array([1], np.int64), f"{_FIRST}_axes"),
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
        inputs = [name, f"{_FIRST}_starts", f"{_FIRST}_ends", f"{_FIRST}_axes"]
        slice_node = helper.make_node("Slice", inputs, [f"{name}_first_token"], name=f"{name}_first_token")
        inserts.setdefault(position, []).append(slice_node)
    ordered = []
    for position, node in enumerate(nodes):
        ordered.extend(inserts.get(position, []))
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)


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

    graph = model.graph
    nodes = list(graph.node)
    constants = _Constants(graph)
    gather = _pooled_gather(nodes, constants)
    if gather is None:
        return 0
    gather_position = nodes.index(gather)
    narrowed = _narrowable(graph, nodes, gather_position, constants)
    if len(narrowed) == 1:
        return 0
    _slice_first_tokens(graph, nodes, narrowed, gather_position)
    onnx.checker.check_model(model)
    return len(narrowed) - 1


def narrow_file(source: Path, target: Path) -> int:
    """`narrow_to_pooled_token` of the ONNX file ``source``, written to ``target`` when something narrowed;
    -> the number of nodes narrowed."""
    import onnx

    model = onnx.load(str(source))
    narrowed = narrow_to_pooled_token(model)
    if narrowed:
        onnx.save(model, str(target))
    return narrowed
