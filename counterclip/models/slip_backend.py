"""SLIP (facebookresearch/SLIP) checkpoints: ``slip:/path/to/checkpoint.pt``.

A SLIP training checkpoint is what its ``main.py`` saves: a dict with ``state_dict`` (keys prefixed
``module.`` by DistributedDataParallel), ``args`` (the run's ``argparse.Namespace``; ``args.model`` names the
architecture, e.g. ``SLIP_VITB16``), and the optimizer's and scaler's states. It is read with
``torch.load(weights_only=True)`` with ``argparse.Namespace`` as the one allowed extra global: a file that
pickles anything else is refused, never unpickled.

The weights map onto a CLIP-style model, as SLIP's ``models.CLIP`` defines it: a timm ``VisionTransformer``
image tower (``visual.*``, class-token pooling, no classifier) followed by the ``image_projection`` matrix;
OpenAI CLIP's text tower (``token_embedding``, ``positional_embedding``, causal ``transformer.resblocks``
with QuickGELU, ``ln_final``, ``text_projection``, read at end of text); and ``logit_scale``. SLIP's
self-supervised head (``image_mlp.*``) is not part of the image-text score and is left out. Images are
resized to the tower's size, centre-cropped and normalised with ImageNet's mean and std (SLIP's
evaluation transform); texts use CLIP's BPE tokenizer at the checkpoint's context length.

Widths, depths, patch size, context length and vocabulary come from the weights' shapes; the head
counts, which shapes do not tell, from ``args.model`` (SLIP's ViT-S/16 uses 12 heads, B/16 12, L/16 16;
its text towers 8).
"""

from __future__ import annotations

import argparse
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from counterclip.errors import ModelLoadError
from counterclip.models.base import ClipModel, VisionGeometry
from counterclip.models.open_clip_backend import resblocks_tower, timm_vit_tower
from counterclip.models.spec import ModelSpec
from counterclip.models.towers import TowerInternals

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# args.model's vision part -> heads of its timm ViT (SLIP's models.py: vit_small_mocov3 has 12 heads)
VISION_HEADS = {"VITS16": 12, "VITB16": 12, "VITL16": 16}
TEXT_HEADS = 8  # every SLIP text tower: width 512, 8 heads
TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], argparse.Namespace]:
    """The ``(state_dict without 'module.', args)`` of a SLIP checkpoint, loaded without arbitrary pickles."""
    if not path.is_file():
        raise ModelLoadError(f"SLIP checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f"a pickled {found.group(1)}" if found else "pickled objects"
        raise ModelLoadError(
            f"SLIP checkpoint {path} holds {what}, which counterclip does not unpickle (only tensors, plain "
            "containers and the argparse.Namespace of args are read); re-save it with only 'state_dict' and 'args'"
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise ModelLoadError(
            f"{path} is not a readable torch checkpoint: {str(exc).splitlines()[0]}"
        ) from exc
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ModelLoadError(
            f"{path} is not a SLIP checkpoint: expected a dict with 'state_dict' and 'args' (as SLIP's main.py saves)"
        )
    args = checkpoint.get("args")
    if not isinstance(args, argparse.Namespace) or not isinstance(getattr(args, "model", None), str):
        raise ModelLoadError(f"SLIP checkpoint {path} has no 'args' with the model name (args.model)")
    state = {}
    for key, value in checkpoint["state_dict"].items():
        if not isinstance(value, torch.Tensor):
            raise ModelLoadError(f"SLIP checkpoint {path}: state_dict entry {key!r} is not a tensor")
        state[key.removeprefix("module.")] = value
    return state, args


def vision_heads(model_name: str, path: Path) -> int:
    """Heads of the image tower of SLIP architecture ``model_name`` (``SLIP_VITB16``, ``CLIP_VITS16``...)."""
    family, _, size = model_name.partition("_")
    if family == "SIMCLR":
        raise ModelLoadError(
            f"{path} is a SIMCLR checkpoint ({model_name}): an image encoder alone, with no text tower to score "
            "pairs; pass a SLIP_* or CLIP_* checkpoint"
        )
    if family not in ("SLIP", "CLIP") or size not in VISION_HEADS:
        known = ", ".join(f"{f}_{s}" for f in ("SLIP", "CLIP") for s in VISION_HEADS)
        raise ModelLoadError(f"{path}: unknown SLIP architecture {model_name!r} (args.model); known: {known}")
    return VISION_HEADS[size]


def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for key in state if (m := regex.match(key))})


def _shape(state: dict[str, torch.Tensor], key: str, path: Path) -> tuple[int, ...]:
    if key not in state:
        raise ModelLoadError(f"SLIP checkpoint {path} has no {key!r}: not a CLIP-style SLIP model")
    return tuple(state[key].shape)


class SlipModule(nn.Module):
    """SLIP's CLIP-style model: ``visual`` (timm ViT) + ``image_projection``, ``text`` (CLIP text tower),
    ``logit_scale``."""

    def __init__(self, visual: nn.Module, text: nn.Module, vision_width: int, embed_dim: int) -> None:
        super().__init__()
        self.visual = visual
        self.text = text
        self.image_projection = nn.Parameter(torch.empty(vision_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.zeros([]))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels) @ self.image_projection

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text(tokens)


def build_module(state: dict[str, torch.Tensor], heads: int, path: Path) -> SlipModule:
    """A `SlipModule` shaped like ``state`` (SLIP's own key names, without ``module.``), weights loaded."""
    from open_clip.transformer import LayerNorm, QuickGELU, TextTransformer
    from timm.models.vision_transformer import VisionTransformer

    width, _, patch, _ = _shape(state, "visual.patch_embed.proj.weight", path)
    tokens = _shape(state, "visual.pos_embed", path)[1] - 1  # the class token has a position too
    grid = int(round(tokens**0.5))
    if grid * grid != tokens:
        raise ModelLoadError(f"SLIP checkpoint {path}: {tokens} patch positions do not form a square grid")
    vision_width, embed_dim = _shape(state, "image_projection", path)
    text_width = _shape(state, "text_projection", path)[0]
    context, _ = _shape(state, "positional_embedding", path)
    vocab, _ = _shape(state, "token_embedding.weight", path)
    depth = _count(state, r"visual\.blocks\.(\d+)\.")
    layers = _count(state, r"transformer\.resblocks\.(\d+)\.")
    if width % heads or text_width % TEXT_HEADS or not depth or not layers:
        raise ModelLoadError(
            f"SLIP checkpoint {path}: widths {width} / {text_width} do not fit {heads} / {TEXT_HEADS} heads "
            "or its blocks are missing"
        )
    visual = VisionTransformer(
        img_size=grid * patch,
        patch_size=patch,
        embed_dim=width,
        depth=depth,
        num_heads=heads,
        mlp_ratio=_shape(state, "visual.blocks.0.mlp.fc1.weight", path)[0] / width,
        qkv_bias="visual.blocks.0.attn.qkv.bias" in state,
        num_classes=0,
        global_pool="token",
    )
    text = TextTransformer(
        context_length=context,
        vocab_size=vocab,
        width=text_width,
        heads=TEXT_HEADS,
        layers=layers,
        mlp_ratio=_shape(state, "transformer.resblocks.0.mlp.c_fc.weight", path)[0] / text_width,
        output_dim=embed_dim,
        act_layer=QuickGELU,
        norm_layer=LayerNorm,
        pool_type="argmax",
    )
    module = SlipModule(visual, text, vision_width, embed_dim)
    mapped = {}
    for key, value in state.items():
        if key.startswith("image_mlp."):
            continue  # SLIP's self-supervised head: not part of the image-text score
        mapped[f"text.{key}" if key.startswith(TEXT_KEYS) else key] = value
    try:
        module.load_state_dict(mapped, strict=True)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3])
        raise ModelLoadError(
            f"SLIP checkpoint {path} does not fit SLIP's CLIP model: {detail[:300]}"
        ) from exc
    return module


class SlipModel(ClipModel):
    """A `ClipModel` over a SLIP checkpoint (see the module doc)."""

    family = "slip"

    def __init__(self, spec: ModelSpec, device: torch.device) -> None:
        super().__init__()
        from open_clip.tokenizer import SimpleTokenizer
        from torchvision import transforms

        self.spec = spec
        self.device = device
        path = Path(spec.name).expanduser()
        state, args = read_checkpoint(path)
        self.args: dict[str, Any] = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float))}
        self.module: nn.Module = build_module(state, vision_heads(args.model, path), path).to(device).eval()
        self.embed_dim = int(self.module.image_projection.shape[1])
        self.context_length = int(self.module.text.context_length)
        size = int(self.module.visual.patch_embed.img_size[0])
        self._transform = transforms.Compose(
            [
                transforms.Resize(size),
                transforms.CenterCrop(size),
                transforms.ToTensor(),
                transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )
        self._tokenizer = SimpleTokenizer(context_length=self.context_length)

    # --- inputs -------------------------------------------------------------------------------
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self._transform(image.convert("RGB"))

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self._tokenizer(list(texts))

    def token_strings(self, text: str) -> list[str]:
        ids = self._tokenizer.encode(text)[: self.context_length - 2]
        return [self._tokenizer.decoder[i].replace("</w>", "") for i in ids]

    # --- features -----------------------------------------------------------------------------
    def image_features(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        emb = self.module.encode_image(pixels)
        return nn.functional.normalize(emb, dim=-1) if normalize else emb

    def text_features(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        emb = self.module.encode_text(tokens)
        return nn.functional.normalize(emb, dim=-1) if normalize else emb

    @property
    def logit_scale(self) -> float:
        return float(self.module.logit_scale.detach().exp().item())

    # --- geometry for explainers --------------------------------------------------------------
    @property
    def vision_geometry(self) -> VisionGeometry:
        embed = self.module.visual.patch_embed
        return VisionGeometry(
            tuple(int(s) for s in embed.img_size),
            tuple(int(p) for p in embed.patch_size),
            tuple(int(g) for g in embed.grid_size),
            1,
        )

    def image_tower(self) -> TowerInternals:
        return timm_vit_tower(self.module.visual, self.module.visual)

    def text_tower(self) -> TowerInternals:
        return resblocks_tower(self.module.text, self.module.text.transformer.resblocks)

    def token_embedding(self) -> nn.Module:
        return self.module.text.token_embedding

    def eot_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """CLIP's rule: the end-of-text token has the largest id."""
        return tokens.argmax(dim=-1)
