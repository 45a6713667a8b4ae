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


def _mix(probs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``probs (n, h, Lq, Lk)`` and values ``(n, h, Lk, hd)`` -> heads side by side ``(n, Lq, h * hd)``."""
    mixed = probs @ values
    n, heads, length, head_dim = mixed.shape
    return mixed.transpose(1, 2).reshape(n, length, heads * head_dim)


def _attend(out_proj: nn.Module, probs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``probs (n, h, Lq, Lk)`` and values ``(n, h, Lk, hd)`` -> projected output ``(n, Lq, D)``."""
    return out_proj(_mix(probs, values))


def _add_mask(scores: torch.Tensor, mask: torch.Tensor | None, allowed_when_true: bool) -> torch.Tensor:
    """Attention logits plus a mask: an additive float mask, or a bool mask (``allowed_when_true``: True
    marks keys that may be attended to, the SDPA and Hugging Face convention; else True marks forbidden
    ones, the ``nn.MultiheadAttention`` convention)."""
    if mask is None:
        return scores
    if mask.dtype == torch.bool:
        forbidden = ~mask if allowed_when_true else mask
        return scores.masked_fill(forbidden, float("-inf"))
    return scores + mask.to(scores.dtype)


class MultiheadAttentionRecompute:
    """``torch.nn.MultiheadAttention``: self-attention in open_clip's blocks, or (``cross=True``) the
    attention of a pooling head whose learned query reads the tokens (SigLIP's ``head.attention``)."""

    def __init__(self, cross: bool = False) -> None:
        self.cross = cross

    def probs_values(
        self, module: nn.Module, args: tuple, kwargs: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        query = args[0] if args else kwargs["query"]
        key = args[1] if len(args) > 1 else kwargs.get("key", query)
        value = args[2] if len(args) > 2 else kwargs.get("value", key)
        if not self.cross and key is not query and not torch.equal(key, query):
            raise InputError("attention maps need self-attention blocks (query == key)")
        xq, xk, xv = (t if module.batch_first else t.transpose(0, 1) for t in (query, key, value))
        n, length, width = xq.shape
        heads = module.num_heads
        head_dim = width // heads
        if module._qkv_same_embed_dim:
            weights = module.in_proj_weight.chunk(3)
        else:
            weights = (module.q_proj_weight, module.k_proj_weight, module.v_proj_weight)
        biases = module.in_proj_bias.chunk(3) if module.in_proj_bias is not None else (None, None, None)
        q, k, v = (
            F.linear(x, w, b).reshape(n, x.shape[1], heads, head_dim).transpose(1, 2)
            for x, w, b in zip((xq, xk, xv), weights, biases, strict=True)
        )
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
        mask = kwargs.get("attn_mask")
        if mask is not None and mask.dim() == 3:  # (n * heads, Lq, Lk)
            mask = mask.view(n, heads, length, k.shape[2])
        scores = _add_mask(scores, mask, allowed_when_true=False)
        padding = kwargs.get("key_padding_mask")
        if padding is not None:
            scores = _add_mask(scores, padding.view(n, 1, 1, k.shape[2]), allowed_when_true=False)
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
            scores = _add_mask(scores, mask, allowed_when_true=True)  # HF convention: True = allowed
        elif kwargs.get("is_causal"):
            causal = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(causal, float("-inf"))
        return torch.softmax(scores, dim=-1), v

    def output(self, module: nn.Module, probs: torch.Tensor, values: torch.Tensor) -> Any:
        return (_attend(module.out_proj, probs, values), probs)


class FusedQkvRecompute:
    """An attention module with one fused ``qkv`` projection, ``num_heads`` and ``scale``, called as
    ``(x (n, L, D), attn_mask=...)``: timm's ViT ``Attention`` (output layer ``proj``; optional q/k norms and
    a norm before it) and BLIP's vision ``BlipAttention`` (output layer ``projection``, returns
    ``(output, weights)``).

    Args:
        out: the name of the output projection (``proj`` for timm, ``projection`` for BLIP).
        returns_weights: the module returns ``(output, weights)`` instead of the output alone.
    """

    def __init__(self, out: str = "proj", returns_weights: bool = False) -> None:
        self.out = out
        self.returns_weights = returns_weights

    def probs_values(
        self, module: nn.Module, args: tuple, kwargs: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if getattr(module, "gate", None) is not None:
            raise InputError("attention maps do not support gated attention blocks: use --method gradcam")
        x = args[0] if args else kwargs.get("x", kwargs.get("hidden_states"))
        n, length, _ = x.shape
        heads = module.num_heads
        head_dim = module.qkv.out_features // (3 * heads)
        q, k, v = module.qkv(x).reshape(n, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q_norm, k_norm = getattr(module, "q_norm", None), getattr(module, "k_norm", None)
        q = q_norm(q) if q_norm is not None else q
        k = k_norm(k) if k_norm is not None else k
        scores = (q * module.scale) @ k.transpose(-1, -2)
        scores = _add_mask(scores, kwargs.get("attn_mask"), allowed_when_true=True)  # SDPA convention
        if kwargs.get("is_causal"):
            causal = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(causal, float("-inf"))
        return torch.softmax(scores, dim=-1), v

    def output(self, module: nn.Module, probs: torch.Tensor, values: torch.Tensor) -> Any:
        mixed = _mix(probs, values)
        norm = getattr(module, "norm", None)
        out = getattr(module, self.out)(norm(mixed) if norm is not None else mixed)
        return (out, probs) if self.returns_weights else out


class BertSelfAttentionRecompute:
    """BERT-style self-attention (``query``/``key``/``value``, ``num_attention_heads``,
    ``attention_head_size``; BLIP's text encoder ``BlipTextSelfAttention``), called as
    ``(hidden_states (n, L, D), attention_mask=...)`` and returning ``(context (n, L, D), weights)``; the
    output projection lives in the next module, so the context is the output here."""

    def probs_values(
        self, module: nn.Module, args: tuple, kwargs: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if kwargs.get("encoder_hidden_states") is not None:
            raise InputError("attention maps read self-attention, not cross-attention to the image")
        x = args[0] if args else kwargs["hidden_states"]
        n, length, _ = x.shape
        heads, head_dim = module.num_attention_heads, module.attention_head_size
        q, k, v = (
            proj(x).reshape(n, length, heads, head_dim).transpose(1, 2)
            for proj in (module.query, module.key, module.value)
        )
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(head_dim)
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1:
            mask = args[1]
        scores = _add_mask(scores, mask, allowed_when_true=True)
        return torch.softmax(scores, dim=-1), v

    def output(self, module: nn.Module, probs: torch.Tensor, values: torch.Tensor) -> Any:
        return (_mix(probs, values), probs)


class LatentPoolRecompute:
    """timm's ``AttentionPoolLatent`` (a learned latent query attends over the tokens; SigLIP's "map" pool
    in open_clip's timm towers). The module computes attention and its head in one forward, so the
    output recomputes the head too: projection, then ``x + mlp(norm(x))``, then the latent pooling."""

    def probs_values(
        self, module: nn.Module, args: tuple, kwargs: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = args[0] if args else kwargs["x"]
        n, length, width = x.shape
        if getattr(module, "pos_embed", None) is not None:
            x = x + module.pos_embed.unsqueeze(0).to(x.dtype)
        heads, head_dim = module.num_heads, module.head_dim
        latent = module.latent.expand(n, -1, -1)
        q = module.q(latent).reshape(n, module.latent_len, heads, head_dim).transpose(1, 2)
        k, v = module.kv(x).reshape(n, length, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = module.q_norm(q), module.k_norm(k)
        scores = (q * module.scale) @ k.transpose(-1, -2)
        scores = _add_mask(scores, kwargs.get("attn_mask"), allowed_when_true=True)
        return torch.softmax(scores, dim=-1), v

    def output(self, module: nn.Module, probs: torch.Tensor, values: torch.Tensor) -> Any:
        x = module.proj_drop(module.proj(_mix(probs, values)))
        if module.mlp is not None:
            x = x + module.mlp(module.norm(x))
        if module.pool == "token":
            return x[:, 0]
        return x.mean(1) if module.pool == "avg" else x


READOUTS = ("token", "mean", "pool")


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
        readout: how the image tower's embedding reads its tokens: ``token`` (one token, ``readout_token``:
            the class token), ``mean`` (the mean of the tokens from ``pool_from`` on), ``pool`` (an
            attention-pooling module ``pool`` whose learned query attends over the tokens from
            ``pool_from`` on: SigLIP). Text towers read where `ClipModel.text_positions` says.
        readout_token: the token a ``token`` readout reads (0: the class token).
        pool: the attention-pooling module of a ``pool`` readout.
        pool_recompute: the maths of that module's attention (None: no attention maps).
        pool_from: the first token a ``mean`` or ``pool`` readout reads (the prefix tokens it skips).
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
    readout: str = "token"
    readout_token: int = 0
    pool: nn.Module | None = None
    pool_recompute: AttentionRecompute | None = None
    pool_from: int = 0

    def __post_init__(self) -> None:
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {', '.join(READOUTS)}, got {self.readout!r}")
        if self.readout == "pool" and self.pool is None:
            raise ValueError("a pool readout needs its pooling module")

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
                hook = _keep_attention(self.recompute, capture, index)  # type: ignore[arg-type]
                handles.append(attention.register_forward_hook(hook, with_kwargs=True))
            yield capture
        finally:
            for handle in handles:
                handle.remove()

    @contextlib.contextmanager
    def capture_pool_attention(self) -> Iterator[AttentionCapture]:
        """Within the block, a forward pass keeps the pooling head's attention ``(n, heads, Lq, Lk)`` (its
        learned queries over the tokens from ``pool_from`` on), as ``capture.ordered()[0]``."""
        if self.pool is None or self.pool_recompute is None:
            raise InputError("this tower's pooling attention cannot be recomputed: use --method gradcam")
        capture = AttentionCapture([0])
        handle = self.pool.register_forward_hook(
            _keep_attention(self.pool_recompute, capture, 0), with_kwargs=True
        )
        try:
            yield capture
        finally:
            handle.remove()

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


def _keep_attention(
    recompute: AttentionRecompute, capture: AttentionCapture, index: int
) -> Callable[..., Any]:
    """A forward hook that recomputes a module's attention, keeps its probabilities in ``capture`` under
    ``index`` and returns the output computed from them."""

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        probs, values = recompute.probs_values(module, args, kwargs)
        if not probs.requires_grad:
            # Frozen weights and a constant input: make the probabilities a leaf so the score still
            # depends on them differentiably (gradients further upstream are not needed here).
            probs = probs.detach().requires_grad_(True)
        capture.probs[index] = probs
        return recompute.output(module, probs, values)

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
