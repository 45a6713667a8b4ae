"""What explainers may ask of a tower: `TowerInternals`, filled in by each backend.

A backend knows its towers: which modules are the transformer blocks, which submodule of a block is its
self-attention and how that attention computes, which norm feeds it, whether hidden states run
``(n, L, D)`` or ``(L, n, D)``, the patch grid, and which layers Grad-CAM may use in a conv tower. It says
so once, in one `TowerInternals` per tower (`ClipModel.image_tower()`, `ClipModel.text_tower()`), and the
explainers never guess from attribute names. The capture helpers here are tower mechanics shared by every
backend; a new family supplies only the fields (and, for an attention module of a new kind, one
`AttentionRecompute`).

Differentiable attention: `nn.MultiheadAttention` returns its weights outside the autograd graph
(``need_weights=True`` gives a tensor whose gradient stays None), and open_clip asks for no weights at all.
So a forward hook on each attention module recomputes the attention from the module's own projections,
keeps the probabilities ``(n, heads, L, L)`` and returns the output computed from them: the block's result
is unchanged (to float rounding) and the kept probabilities are on the path to the score. Hooks live inside
a ``with`` block and are removed in ``finally``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from counterclip.errors import InputError


class AttentionRecompute(Protocol):
    """The maths of one kind of self-attention module, recomputed outside the module."""

    def probs_values(
        self, module: nn.Module, args: tuple, kwargs: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """From the module's call arguments: ``(probs (n, h, L, L), values (n, h, L, hd))``."""
        ...

    def output(self, module: nn.Module, probs: torch.Tensor, values: torch.Tensor) -> Any:
        """What the module returns, computed from ``probs`` and ``values``."""
        ...


def _attend(out_proj: nn.Module, probs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``probs (n, h, L, L)`` and values ``(n, h, L, hd)`` -> projected output ``(n, L, D)``."""
    n, heads, length, head_dim = values.shape
    return out_proj((probs @ values).transpose(1, 2).reshape(n, length, heads * head_dim))


class MultiheadAttentionRecompute:
    """``torch.nn.MultiheadAttention`` used as self-attention (open_clip's blocks)."""

    def probs_values(
        self, module: nn.Module, args: tuple, kwargs: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        query = args[0] if args else kwargs["query"]
        key = args[1] if len(args) > 1 else kwargs.get("key", query)
        if key is not query and not torch.equal(key, query):
            raise InputError("attention maps need self-attention blocks (query == key)")
        x = query if module.batch_first else query.transpose(0, 1)
        n, length, width = x.shape
        heads = module.num_heads
        head_dim = width // heads
        if module._qkv_same_embed_dim:
            q, k, v = F.linear(x, module.in_proj_weight, module.in_proj_bias).chunk(3, dim=-1)
        else:
            biases = module.in_proj_bias.chunk(3) if module.in_proj_bias is not None else (None, None, None)
            q = F.linear(x, module.q_proj_weight, biases[0])
            k = F.linear(x, module.k_proj_weight, biases[1])
            v = F.linear(x, module.v_proj_weight, biases[2])
        q, k, v = (t.reshape(n, length, heads, head_dim).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
        mask = kwargs.get("attn_mask")
        if mask is not None:
            if mask.dtype == torch.bool:  # MHA convention: True = not allowed
                mask = torch.zeros_like(mask, dtype=scores.dtype).masked_fill(mask, float("-inf"))
            scores = scores + (mask.view(n, heads, length, length) if mask.dim() == 3 else mask).to(
                scores.dtype
            )
        padding = kwargs.get("key_padding_mask")
        if padding is not None:
            if padding.dtype == torch.bool:
                padding = torch.zeros_like(padding, dtype=scores.dtype).masked_fill(padding, float("-inf"))
            scores = scores + padding.view(n, 1, 1, length).to(scores.dtype)
        return torch.softmax(scores, dim=-1), v

    def output(self, module: nn.Module, probs: torch.Tensor, values: torch.Tensor) -> Any:
        out = _attend(module.out_proj, probs, values)
        return (out if module.batch_first else out.transpose(0, 1), None)


class SplitProjectionRecompute:
    """An attention module with ``q_proj``/``k_proj``/``v_proj``/``out_proj``, ``num_heads`` and ``scale``,
    called as ``(hidden_states (n, L, D), attention_mask=...)`` and returning ``(output, weights)``
    (Hugging Face ``CLIPAttention`` and the families that copy it)."""

    def probs_values(
        self, module: nn.Module, args: tuple, kwargs: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = args[0] if args else kwargs["hidden_states"]
        n, length, width = x.shape
        heads = module.num_heads
        head_dim = width // heads
        q, k, v = (
            proj(x).reshape(n, length, heads, head_dim).transpose(1, 2)
            for proj in (module.q_proj, module.k_proj, module.v_proj)
        )
        scores = (q @ k.transpose(-1, -2)) * module.scale
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1:
            mask = args[1]
        if mask is not None:
            if mask.dtype == torch.bool:  # HF convention: True = allowed
                mask = torch.zeros_like(mask, dtype=scores.dtype).masked_fill(~mask, float("-inf"))
            scores = scores + mask.to(scores.dtype)
        elif kwargs.get("is_causal"):
            causal = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(causal, float("-inf"))
        return torch.softmax(scores, dim=-1), v

    def output(self, module: nn.Module, probs: torch.Tensor, values: torch.Tensor) -> Any:
        return (_attend(module.out_proj, probs, values), probs)


class AttentionCapture:
    """Attention probabilities ``(n, heads, L, L)`` per captured block, in block order, kept in the graph."""

    def __init__(self, indices: Sequence[int]) -> None:
        self.indices = list(indices)
        self.probs: dict[int, torch.Tensor] = {}

    def ordered(self) -> list[torch.Tensor]:
        """The captured probabilities in block order (raises if a block did not run)."""
        missing = [i for i in self.indices if i not in self.probs]
        if missing:
            raise RuntimeError(f"attention of blocks {missing} was not captured (did the tower run?)")
        return [self.probs[i] for i in self.indices]


@dataclass(frozen=True)
class TowerInternals:
    """One tower as the explainers see it; built by the backend (see the module doc).

    Attributes:
        module: the tower; layer names are relative to it.
        blocks: transformer blocks, input to output (empty for a conv tower).
        attention_of: block -> its self-attention module.
        recompute: the maths of that module (None: its attention cannot be recomputed, so no attention maps).
        norm_of: block -> the norm whose output feeds its attention (None: the block input feeds it).
        batch_first: hidden states are ``(n, L, D)``; False: ``(L, n, D)``.
        grid: the patch grid ``(gh, gw)`` of a ViT image tower, else None.
        prefix_tokens: class (and register) tokens before the patch tokens.
        conv_layers: Grad-CAM layer names of a conv tower, input to output (ViT towers use their blocks).
        default_conv_layer: the conv layer Grad-CAM uses by default.
    """

    module: nn.Module
    blocks: tuple[nn.Module, ...] = ()
    attention_of: Callable[[nn.Module], nn.Module] | None = None
    recompute: AttentionRecompute | None = None
    norm_of: Callable[[nn.Module], nn.Module | None] | None = None
    batch_first: bool = True
    grid: tuple[int, int] | None = None
    prefix_tokens: int = 0
    conv_layers: tuple[str, ...] = ()
    default_conv_layer: str | None = None

    def tokens_first(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden states of a block as ``(n, L, D)`` whatever the tower's layout."""
        return x if self.batch_first else x.transpose(0, 1)

    def layer_names(self) -> list[str]:
        """Grad-CAM layer candidates: the blocks' names (ViT) or the conv layers."""
        if not self.blocks:
            return list(self.conv_layers)
        ids = {id(b) for b in self.blocks}
        return [name for name, module in self.module.named_modules() if id(module) in ids]

    def default_layer(self) -> str | None:
        """The last block (ViT) or the default conv layer; None when there is none."""
        if self.blocks:
            return self.layer_names()[-1]
        return self.default_conv_layer or (self.conv_layers[-1] if self.conv_layers else None)

    def layer(self, name: str) -> nn.Module:
        """The layer called ``name``: a block of a ViT tower, any named submodule of a conv tower."""
        modules = dict(self.module.named_modules())
        if name not in modules or (self.blocks and name not in self.layer_names()):
            candidates = ", ".join(self.layer_names()[-6:])
            raise InputError(
                f"no layer named {name!r} in the image tower (some candidates: {candidates}; see --list-layers)"
            )
        return modules[name]

    @contextlib.contextmanager
    def capture_attention(self, indices: Sequence[int]) -> Iterator[AttentionCapture]:
        """Within the block, a forward pass keeps the differentiable attention of blocks ``indices``.

        Yields:
            An `AttentionCapture` filled by the next forward pass through the tower.
        """
        if indices and (self.recompute is None or self.attention_of is None):
            raise InputError("this tower's attention cannot be recomputed: use --method gradcam, ig or lime")
        capture = AttentionCapture(indices)
        handles = []
        try:
            for index in indices:
                attention = self.attention_of(self.blocks[index])  # type: ignore[misc]
                handles.append(
                    attention.register_forward_hook(self._keep_attention(capture, index), with_kwargs=True)
                )
            yield capture
        finally:
            for handle in handles:
                handle.remove()

    def _keep_attention(self, capture: AttentionCapture, index: int) -> Callable[..., Any]:
        recompute = self.recompute

        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            probs, values = recompute.probs_values(module, args, kwargs)  # type: ignore[union-attr]
            if not probs.requires_grad:
                # Frozen weights and a constant input: make the probabilities a leaf so the score still
                # depends on them differentiably (gradients further upstream are not needed here).
                probs = probs.detach().requires_grad_(True)
            capture.probs[index] = probs
            return recompute.output(module, probs, values)  # type: ignore[union-attr]

        return hook

    @contextlib.contextmanager
    def capture_attention_inputs(self, indices: Sequence[int]) -> Iterator[list[dict[str, torch.Tensor]]]:
        """Within the block, keep the hidden states each block in ``indices`` feeds its attention.

        That is the output of the block's pre-attention norm, or the block input when it has none; each as
        ``store['x']`` of shape ``(n, L, D)``, in the order of ``indices``.
        """
        stores: list[dict[str, torch.Tensor]] = [{} for _ in indices]
        handles = []
        try:
            for index, store in zip(indices, stores, strict=True):
                block = self.blocks[index]
                norm = self.norm_of(block) if self.norm_of is not None else None
                if norm is not None:
                    handles.append(norm.register_forward_hook(self._keep_output(store)))
                else:
                    handles.append(block.register_forward_pre_hook(self._keep_input(store), with_kwargs=True))
            yield stores
        finally:
            for handle in handles:
                handle.remove()

    def _keep_output(self, store: dict[str, torch.Tensor]) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            store["x"] = self.tokens_first(output)

        return hook

    def _keep_input(self, store: dict[str, torch.Tensor]) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            store["x"] = self.tokens_first(args[0] if args else next(iter(kwargs.values())))

        return hook


def conv_layer_names(tower: nn.Module) -> tuple[str, ...]:
    """Named submodules of a conv tower that contain a convolution (stages and blocks), input to output."""
    return tuple(
        name
        for name, module in tower.named_modules()
        if name
        and not isinstance(module, nn.Conv2d)
        and any(isinstance(c, nn.Conv2d) for c in module.modules())
    )
