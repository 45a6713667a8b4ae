"""Differentiable attention probabilities and block inputs, captured for one call.

`nn.MultiheadAttention` returns its weights outside the autograd graph (``need_weights=True`` gives a
tensor whose gradient stays None), and open_clip asks for no weights at all. So a forward hook on each
attention module recomputes the attention from the module's own projections, keeps the probabilities
``(n, heads, L, L)`` and returns the recomputed output: the block's result is unchanged (to float
rounding) and the kept probabilities are on the path to the score. Hugging Face ``CLIPAttention`` is
handled the same way, so both backends go through one code path. Hooks live inside a ``with`` block and
are removed in ``finally``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from counterclip.errors import InputError
from counterclip.models.base import ClipModel


def tower_blocks(model: ClipModel, tower: str) -> list[nn.Module]:
    """The transformer blocks of ``tower`` (``image`` or ``text``), input to output."""
    if tower == "image":
        return model.vision_blocks()
    if tower == "text":
        return model.text_blocks()
    raise ValueError(f"tower must be 'image' or 'text', got {tower!r}")


def attention_module(block: nn.Module) -> nn.Module:
    """The self-attention module of a block (open_clip ``.attn`` or Hugging Face ``.self_attn``)."""
    for name in ("attn", "self_attn"):
        module = getattr(block, name, None)
        if isinstance(module, nn.Module):
            return module
    raise InputError(f"block {type(block).__name__} has no attention module (.attn / .self_attn)")


def select_blocks(count: int, blocks: int | Sequence[int] | None) -> list[int]:
    """Indices of the blocks to use: None = all, an int k = the last k, a sequence = those indices."""
    if count == 0:
        raise InputError(
            "this tower has no transformer blocks (a conv tower?): use --method gradcam, ig or lime"
        )
    if blocks is None:
        return list(range(count))
    if isinstance(blocks, int):
        if blocks < 1:
            raise InputError(f"--blocks must be at least 1, got {blocks}")
        return list(range(max(0, count - blocks), count))
    chosen = sorted({b % count for b in blocks})
    if not chosen:
        raise InputError("no blocks selected")
    return chosen


def _mha_attention(
    attn: nn.MultiheadAttention, x: torch.Tensor, kwargs: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Recompute ``nn.MultiheadAttention`` self-attention: ``(probs (n, h, L, L), values (n, h, L, hd))``."""
    n, length, width = x.shape
    heads = attn.num_heads
    head_dim = width // heads
    if attn._qkv_same_embed_dim:
        q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    else:
        biases = attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None else (None, None, None)
        q = F.linear(x, attn.q_proj_weight, biases[0])
        k = F.linear(x, attn.k_proj_weight, biases[1])
        v = F.linear(x, attn.v_proj_weight, biases[2])
    q, k, v = (t.reshape(n, length, heads, head_dim).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
    mask = kwargs.get("attn_mask")
    if mask is not None:
        if mask.dtype == torch.bool:  # MHA convention: True = not allowed
            mask = torch.zeros_like(mask, dtype=scores.dtype).masked_fill(mask, float("-inf"))
        scores = scores + (mask.view(n, heads, length, length) if mask.dim() == 3 else mask).to(scores.dtype)
    padding = kwargs.get("key_padding_mask")
    if padding is not None:
        if padding.dtype == torch.bool:
            padding = torch.zeros_like(padding, dtype=scores.dtype).masked_fill(padding, float("-inf"))
        scores = scores + padding.view(n, 1, 1, length).to(scores.dtype)
    return torch.softmax(scores, dim=-1), v


def _hf_attention(
    attn: nn.Module, x: torch.Tensor, kwargs: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Recompute Hugging Face ``CLIPAttention``: ``(probs (n, h, L, L), values (n, h, L, hd))``."""
    n, length, width = x.shape
    heads = attn.num_heads
    head_dim = width // heads
    q, k, v = (
        proj(x).reshape(n, length, heads, head_dim).transpose(1, 2)
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj)
    )
    scores = (q @ k.transpose(-1, -2)) * attn.scale
    mask = kwargs.get("attention_mask")
    if mask is not None:
        if mask.dtype == torch.bool:  # HF convention: True = allowed
            mask = torch.zeros_like(mask, dtype=scores.dtype).masked_fill(~mask, float("-inf"))
        scores = scores + mask.to(scores.dtype)
    elif kwargs.get("is_causal"):
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(causal, float("-inf"))
    return torch.softmax(scores, dim=-1), v


def _attend(attn: nn.Module, probs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``probs (n, h, L, L)`` and values ``(n, h, L, hd)`` -> projected output ``(n, L, D)``."""
    n, heads, length, head_dim = v.shape
    return attn.out_proj((probs @ v).transpose(1, 2).reshape(n, length, heads * head_dim))


class AttentionCapture:
    """Attention probabilities ``(n, heads, L, L)`` per captured block, in block order, kept in the graph."""

    def __init__(self, indices: list[int]) -> None:
        self.indices = indices
        self.probs: dict[int, torch.Tensor] = {}

    def ordered(self) -> list[torch.Tensor]:
        """The captured probabilities in block order (raises if a block did not run)."""
        missing = [i for i in self.indices if i not in self.probs]
        if missing:
            raise RuntimeError(f"attention of blocks {missing} was not captured (did the tower run?)")
        return [self.probs[i] for i in self.indices]


def _make_hook(capture: AttentionCapture, index: int):
    """A forward hook that recomputes the attention, keeps its probabilities and returns the new output."""

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        is_mha = isinstance(module, nn.MultiheadAttention)
        if is_mha:
            query = args[0] if args else kwargs["query"]
            key = args[1] if len(args) > 1 else kwargs.get("key", query)
            if key is not query and not torch.equal(key, query):
                raise InputError("relevance maps need self-attention blocks (query == key)")
            x = query if module.batch_first else query.transpose(0, 1)
            probs, values = _mha_attention(module, x, kwargs)
        else:
            x = args[0] if args else kwargs["hidden_states"]
            probs, values = _hf_attention(module, x, kwargs)
        if not probs.requires_grad:
            # Frozen weights and a constant input: make the probabilities a leaf so the score still
            # depends on them differentiably (gradients further upstream are not needed here).
            probs = probs.detach().requires_grad_(True)
        capture.probs[index] = probs
        out = _attend(module, probs, values)
        if is_mha:
            return (out if module.batch_first else out.transpose(0, 1), None)
        return (out, probs)

    return hook


@contextlib.contextmanager
def capture_attention(model: ClipModel, tower: str, indices: list[int]) -> Iterator[AttentionCapture]:
    """Within the block, forward passes of ``tower`` keep differentiable attention of blocks ``indices``.

    Args:
        model: the CLIP model.
        tower: ``image`` or ``text``.
        indices: block indices (from `select_blocks`).

    Yields:
        An `AttentionCapture` filled by the next forward pass through the tower.
    """
    blocks = tower_blocks(model, tower)
    capture = AttentionCapture(indices)
    handles = []
    try:
        for index in indices:
            handles.append(
                attention_module(blocks[index]).register_forward_hook(
                    _make_hook(capture, index), with_kwargs=True
                )
            )
        yield capture
    finally:
        for handle in handles:
            handle.remove()


def tokens_first(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A block's hidden states as ``(n, L, D)`` whatever the backend's layout."""
    attn = getattr(block, "attn", None)
    if isinstance(attn, nn.MultiheadAttention) and not attn.batch_first:
        return x.transpose(0, 1)
    return x


@contextlib.contextmanager
def capture_block_input(block: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, keep the hidden states entering ``block`` as ``store['x']`` (``(n, L, D)``)."""
    store: dict[str, torch.Tensor] = {}

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else next(iter(kwargs.values()))
        store["x"] = tokens_first(module, x)

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield store
    finally:
        handle.remove()


def first_norm(block: nn.Module) -> nn.Module | None:
    """The LayerNorm a block applies before attention (open_clip ``ln_1``, HF ``layer_norm1``), if any."""
    for name in ("ln_1", "layer_norm1"):
        module = getattr(block, name, None)
        if isinstance(module, nn.Module):
            return module
    return None


@contextlib.contextmanager
def capture_norm_output(block: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, keep the output of ``block``'s pre-attention norm as ``store['x']`` (``(n, L, D)``)."""
    store: dict[str, torch.Tensor] = {}
    norm = first_norm(block)
    if norm is None:
        raise InputError(f"block {type(block).__name__} has no pre-attention norm (ln_1 / layer_norm1)")

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        store["x"] = tokens_first(block, output)

    handle = norm.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()
