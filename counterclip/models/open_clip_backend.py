"""open_clip backend: any architecture (built-in name or JSON config), pretrained tag, local checkpoint,
``hf-hub:`` or ``local-dir:`` published models, and the bundled model (same code path)."""

from __future__ import annotations

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
from counterclip.models.base import ClipModel, VisionGeometry
from counterclip.models.registry import OFFLINE_HINT
from counterclip.models.spec import ModelSpec
from counterclip.models.towers import (
    MultiheadAttentionRecompute,
    TowerInternals,
    conv_layer_names,
)

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


class OpenClipModel(ClipModel):
    """A `ClipModel` over an open_clip ``CLIP`` / ``CustomTextCLIP``."""

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
        inner = getattr(tokenizer, "tokenizer", None)  # HF tokenizer wrapper
        if inner is not None:
            return inner.tokenize(text)[: self.context_length - 2]
        raise ModelLoadError(f"token strings are not available for the tokenizer of {self.spec}")

    # --- features -----------------------------------------------------------------------------
    def image_features(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.module.encode_image(pixels, normalize=normalize)

    def text_features(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.module.encode_text(tokens, normalize=normalize)

    @property
    def logit_scale(self) -> float:
        return float(self.module.logit_scale.detach().exp().item())

    # --- geometry for explainers --------------------------------------------------------------
    @property
    def vision_geometry(self) -> VisionGeometry:
        visual = self.module.visual
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
        transformer = getattr(visual, "transformer", None)
        if transformer is None:  # ModifiedResNet: a conv tower with stages layer1..layer4
            names = conv_layer_names(visual)
            stages = [n for n in names if "." not in n and n.startswith("layer")]
            return TowerInternals(
                visual, conv_layers=names, default_conv_layer=stages[-1] if stages else None
            )
        geometry = self.vision_geometry
        return resblocks_tower(visual, transformer.resblocks, geometry.grid_size, geometry.num_prefix_tokens)

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
