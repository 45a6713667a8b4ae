"""open_clip backend: any architecture (built-in name or JSON config), pretrained tag, local checkpoint,
``hf-hub:`` or ``local-dir:`` published models, and the bundled model (same code path)."""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import open_clip
import torch
from open_clip.tokenizer import SimpleTokenizer
from PIL import Image
from torch import nn

from counterclip.errors import ModelLoadError
from counterclip.models.base import ClipModel, TextPositions, VisionGeometry
from counterclip.models.registry import OFFLINE_HINT
from counterclip.models.spec import ModelSpec
from counterclip.models.towers import (
    FusedQkvRecompute,
    LatentPoolRecompute,
    MultiheadAttentionRecompute,
    TowerInternals,
    conv_layer_names,
)
from counterclip.scores import PairScore

LOG = logging.getLogger(__name__)


def register_config_file(path: Path) -> str:
    """Register an open_clip model-config JSON (bare ``embed_dim``/``vision_cfg``/``text_cfg``) and
    return the name open_clip knows it by (the file stem).

    open_clip keeps configs in a process-wide registry keyed by file stem; registering a *different*
    config under a name that is already taken would silently change what that name builds, so it is an
    error instead.
    """
    if not path.is_file():
        raise ModelLoadError(f"model config file not found: {path}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"model config {path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict) or not all(
        key in config for key in ("embed_dim", "vision_cfg", "text_cfg")
    ):
        raise ModelLoadError(
            f"model config {path} must hold a bare open_clip config with embed_dim, vision_cfg and text_cfg"
        )
    name = path.stem
    existing = open_clip.get_model_config(name)
    if existing is not None and existing != config:
        raise ModelLoadError(
            f"model config {path} is named {name!r}, which open_clip already knows with another architecture; "
            "rename the file"
        )
    if existing is None:
        open_clip.add_model_config(path)
    return name


def _resolve_arch(spec: ModelSpec) -> str:
    """Return the open_clip model name for ``spec`` (registering a JSON config if one is given)."""
    if spec.source == "hub":
        return f"hf-hub:{spec.name}"
    if spec.source == "local-dir":
        return f"local-dir:{spec.name}"
    if spec.name.lower().endswith(".json"):
        return register_config_file(Path(spec.name).expanduser())
    known = open_clip.list_models()
    if spec.name.replace("/", "-") not in known:
        close = difflib.get_close_matches(spec.name, known, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ModelLoadError(
            f"unknown open_clip architecture {spec.name!r}; {hint}"
            "see `counterclip models` for the list, or pass a model-config JSON file"
        )
    return spec.name


def _resolve_pretrained(spec: ModelSpec, arch: str) -> str | None:
    """Validate the tag or checkpoint path before open_clip sees it, so errors name the right thing."""
    if spec.pretrained is None or spec.source in ("hub", "local-dir"):
        return None
    if spec.source == "local":
        path = Path(spec.pretrained).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"checkpoint file not found: {path}")
        return str(path)
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if spec.pretrained not in tags:
        available = ", ".join(tags) if tags else "none"
        raise ModelLoadError(
            f"unknown pretrained tag {spec.pretrained!r} for {arch} (known tags: {available}); "
            "for a local file give its path (ARCH:/path/to/file)"
        )
    return spec.pretrained


def _explain_load_failure(spec: ModelSpec, arch: str, exc: Exception) -> ModelLoadError:
    """Turn open_clip's exceptions into one line that names the thing and what to do."""
    text = str(exc)
    if (
        isinstance(exc, AssertionError)
        or "state_dict" in text
        or "size mismatch" in text
        or "Missing key" in text
        or "Unexpected key" in text
    ):
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        first = next(
            (line for line in lines if "size mismatch" in line or "key" in line), lines[0] if lines else ""
        )
        return ModelLoadError(
            f"checkpoint {spec.pretrained} does not fit architecture {arch}: {first[:200]}"
            " (pass the architecture the checkpoint was trained with)"
        )
    if spec.source in ("tag", "hub") or "download" in text.lower() or "hub" in text.lower():
        return ModelLoadError(
            f"could not download the weights of {spec} (no network or hub unreachable); {OFFLINE_HINT}"
        )
    return ModelLoadError(
        f"could not load {spec}: {text.splitlines()[0][:200] if text else type(exc).__name__}"
    )


def resblocks_tower(
    tower: nn.Module,
    blocks: Sequence[nn.Module],
    grid: tuple[int, int] | None = None,
    prefix_tokens: int = 0,
) -> TowerInternals:
    """`TowerInternals` of a tower made of open_clip ``ResidualAttentionBlock``s (``ln_1`` -> ``attn``).

    Blocks whose ``attn`` is open_clip's own ``Attention`` (scaled-cosine or head-scaled variants) keep
    no recompute: attention maps then raise a clear error, Grad-CAM, IG and LIME still work.
    """
    blocks = tuple(blocks)
    standard = all(isinstance(b.attn, nn.MultiheadAttention) for b in blocks)
    return TowerInternals(
        tower,
        blocks,
        attention_of=lambda block: block.attn,
        recompute=MultiheadAttentionRecompute() if standard else None,
        norm_of=lambda block: block.ln_1,
        batch_first=bool(getattr(blocks[0].attn, "batch_first", True)) if blocks else True,
        grid=grid,
        prefix_tokens=prefix_tokens,
    )


def timm_vit_tower(tower: nn.Module, trunk: nn.Module) -> TowerInternals:
    """`TowerInternals` of a timm ``VisionTransformer`` trunk (open_clip's timm towers, e.g. its SigLIP
    configs, and SLIP's image tower): ``norm1`` -> ``attn`` (fused ``qkv``), and the trunk's pooling as the
    readout (class token, mean of the patch tokens, or a latent attention pool: SigLIP's ``map``)."""
    blocks = tuple(trunk.blocks)
    standard = all(hasattr(b, "attn") and hasattr(b.attn, "qkv") and hasattr(b, "norm1") for b in blocks)
    prefix = int(getattr(trunk, "num_prefix_tokens", 0))
    pool_from = 0 if getattr(trunk, "pool_include_prefix", False) else prefix
    attn_pool = getattr(trunk, "attn_pool", None)
    readout: dict = {"readout": "token", "readout_token": 0}
    if attn_pool is not None:
        readout = {"readout": "pool", "pool": attn_pool, "pool_from": pool_from}
        if hasattr(attn_pool, "latent") and hasattr(attn_pool, "kv"):
            readout["pool_recompute"] = LatentPoolRecompute()
    elif getattr(trunk, "global_pool", "token") == "avg" or not prefix:
        readout = {"readout": "mean", "pool_from": pool_from}
    return TowerInternals(
        tower,
        blocks,
        attention_of=lambda block: block.attn,
        recompute=FusedQkvRecompute("proj") if standard else None,
        norm_of=lambda block: block.norm1,
        grid=tuple(int(g) for g in trunk.patch_embed.grid_size),
        prefix_tokens=prefix,
        **readout,
    )


class OpenClipModel(ClipModel):
    """A `ClipModel` over an open_clip ``CLIP`` / ``CustomTextCLIP`` (SigLIP configs included: a model
    with a ``logit_bias`` scores with it, through a sigmoid)."""

    def __init__(self, spec: ModelSpec, device: torch.device, checkpoint: str | None = None) -> None:
        """Build the architecture and load weights.

        Args:
            spec: what to load (backend ``open_clip``, or ``bundled`` with ``checkpoint`` given).
            device: where to run.
            checkpoint: overrides ``spec.pretrained`` with a local weights file (used by the bundled loader).
        """
        super().__init__()
        self.spec = spec
        self.device = device
        arch = _resolve_arch(spec) if checkpoint is None else register_config_file(Path(spec.name))
        pretrained = _resolve_pretrained(spec, arch) if checkpoint is None else checkpoint
        started = time.perf_counter()
        try:
            module, _, transform = open_clip.create_model_and_transforms(
                arch, pretrained=pretrained, device=device, weights_only=True
            )
        except ModelLoadError:
            raise
        except (RuntimeError, ValueError, OSError, KeyError, AssertionError) as exc:
            raise _explain_load_failure(spec, arch, exc) from exc
        module.eval()
        self.module: nn.Module = module
        self._transform = transform
        self._tokenizer = open_clip.get_tokenizer(arch)
        self.context_length = int(getattr(self._tokenizer, "context_length", 77))
        with torch.no_grad():
            probe = self.module.encode_text(self.tokenize(["a"]).to(device))
        self.embed_dim = int(probe.shape[-1])
        self.family = "siglip" if self._logit_bias is not None else "clip"
        LOG.info("loaded %s in %.1f s", spec, time.perf_counter() - started)

    # --- inputs -------------------------------------------------------------------------------
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self._transform(image)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self._tokenizer(list(texts))

    def token_strings(self, text: str) -> list[str]:
        tokenizer = self._tokenizer
        if isinstance(tokenizer, SimpleTokenizer):
            ids = tokenizer.encode(text)[: self.context_length - 2]
            return [tokenizer.decoder[i].replace("</w>", "") for i in ids]
        inner = getattr(tokenizer, "tokenizer", None)  # HF tokenizer wrappers (HFTokenizer, SigLipTokenizer)
        if inner is not None:
            clean = getattr(tokenizer, "clean_fn", None)
            if clean is None and type(tokenizer).__name__ == "SigLipTokenizer":  # cleans as it tokenizes
                from open_clip.tokenizer import basic_clean, canonicalize_text

                def clean(t: str) -> str:
                    return canonicalize_text(basic_clean(t))

            pieces = inner.tokenize(clean(text) if clean is not None else text)
            specials = 2 if self._special_ids()[0] is not None else 1  # start (if any) and end of text
            return [p.replace("\u2581", "") or p for p in pieces[: self.context_length - specials]]
        raise ModelLoadError(f"token strings are not available for the tokenizer of {self.spec}")

    # --- features -----------------------------------------------------------------------------
    def image_features(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.module.encode_image(pixels, normalize=normalize)

    def text_features(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.module.encode_text(tokens, normalize=normalize)

    @property
    def logit_scale(self) -> float:
        return float(self.module.logit_scale.detach().exp().item())

    @property
    def _logit_bias(self) -> float | None:
        bias = getattr(self.module, "logit_bias", None)
        return None if bias is None else float(bias.detach().reshape(-1)[0].item())

    @property
    def pair_score(self) -> PairScore:
        """CLIP: ``logit_scale * cos``. With a learned ``logit_bias`` (open_clip's SigLIP configs): scale, bias
        and a sigmoid, the model's own absolute match probability."""
        bias = self._logit_bias
        if bias is None:
            return PairScore(scale=self.logit_scale)
        return PairScore(self.logit_scale, bias, "sigmoid")

    # --- geometry for explainers --------------------------------------------------------------
    def _timm_trunk(self) -> nn.Module | None:
        """The timm ViT inside an open_clip ``TimmModel`` image tower, else None."""
        trunk = getattr(self.module.visual, "trunk", None)
        return (
            trunk
            if trunk is not None and hasattr(trunk, "blocks") and hasattr(trunk, "patch_embed")
            else None
        )

    @property
    def vision_geometry(self) -> VisionGeometry:
        visual = self.module.visual
        trunk = self._timm_trunk()
        if trunk is not None:
            patch = tuple(int(p) for p in trunk.patch_embed.patch_size)
            grid = tuple(int(g) for g in trunk.patch_embed.grid_size)
            return VisionGeometry(
                tuple(open_clip.transformer.to_2tuple(visual.image_size)),
                patch,
                grid,
                int(getattr(trunk, "num_prefix_tokens", 0)),
            )
        image_size = tuple(open_clip.transformer.to_2tuple(visual.image_size))
        grid = getattr(visual, "grid_size", None)
        patch = getattr(visual, "patch_size", None)
        prefix = 0 if getattr(visual, "class_embedding", None) is None else 1
        return VisionGeometry(
            image_size=image_size,
            patch_size=tuple(open_clip.transformer.to_2tuple(patch)) if patch is not None else None,
            grid_size=tuple(grid) if grid is not None else None,
            num_prefix_tokens=prefix if grid is not None else 0,
        )

    def image_tower(self) -> TowerInternals:
        visual = self.module.visual
        trunk = self._timm_trunk()
        if trunk is not None:
            return timm_vit_tower(visual, trunk)
        transformer = getattr(visual, "transformer", None)
        if transformer is None:  # ModifiedResNet: a conv tower with stages layer1..layer4
            names = conv_layer_names(visual)
            stages = [n for n in names if "." not in n and n.startswith("layer")]
            return TowerInternals(
                visual, conv_layers=names, default_conv_layer=stages[-1] if stages else None
            )
        geometry = self.vision_geometry
        tower = resblocks_tower(visual, transformer.resblocks, geometry.grid_size, geometry.num_prefix_tokens)
        if getattr(visual, "attn_pool", None) is not None:  # CoCa-style attentional pooler: no maps
            return dataclasses.replace(tower, readout="pool", pool=visual.attn_pool)
        if getattr(visual, "pool_type", "tok") == "avg":
            return dataclasses.replace(tower, readout="mean", pool_from=geometry.num_prefix_tokens)
        return tower

    def _text_tower(self) -> nn.Module:
        return getattr(self.module, "text", self.module)

    def text_tower(self) -> TowerInternals:
        tower = self._text_tower()
        resblocks = getattr(getattr(tower, "transformer", None), "resblocks", None)
        if resblocks is None:  # e.g. a Hugging Face text encoder inside CustomTextCLIP
            return TowerInternals(tower)
        return resblocks_tower(tower, resblocks)

    def token_embedding(self) -> nn.Module:
        tower = self._text_tower()
        if not hasattr(tower, "token_embedding"):
            raise ModelLoadError(f"the text tower of {self.spec} has no token_embedding layer")
        return tower.token_embedding

    def eot_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        tower = self._text_tower()
        pool = getattr(self.module, "text_pool_type", getattr(tower, "pool_type", "argmax"))
        if pool == "eos":
            eos = getattr(self.module, "text_eos_id", getattr(tower, "eos_id", None))
            return (tokens == eos).int().argmax(dim=-1)
        if pool == "last":
            return torch.full((tokens.shape[0],), tokens.shape[1] - 1, dtype=torch.long, device=tokens.device)
        if pool == "first":
            return torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
        return tokens.argmax(dim=-1)

    def _special_ids(self) -> tuple[int | None, int | None]:
        """The tokenizer's start and end-of-text ids (None where it has none or does not say)."""
        tokenizer = self._tokenizer
        if isinstance(tokenizer, SimpleTokenizer):
            return tokenizer.sot_token_id, tokenizer.eot_token_id
        inner = getattr(tokenizer, "tokenizer", None)
        return getattr(inner, "bos_token_id", None), getattr(inner, "eos_token_id", None)

    def text_positions(self, tokens: torch.Tensor) -> list[TextPositions]:
        """Read where the text tower pools (end of text; the last position for SigLIP's ``last`` pool, which
        reads padding); the text's own tokens are those after a start token and before the first end of
        text, whatever follows (padding to the full context, as SigLIP's tokenizer does)."""
        bos, eos = self._special_ids()
        pooled = self.eot_positions(tokens).tolist()
        out = []
        for row, at in zip(tokens.tolist(), pooled, strict=True):
            start = 1 if bos is not None and row and row[0] == bos else 0
            if eos is not None and eos in row[start:]:
                end = row.index(eos, start)
            else:
                end = at if at > start else len(row)
            out.append(TextPositions(int(at), slice(start, end)))
        return out
