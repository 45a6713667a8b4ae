"""Hugging Face backend: ``transformers.CLIPModel`` + its processor, from a hub id or a local directory."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from counterclip.errors import ModelLoadError
from counterclip.models.base import ClipModel, VisionGeometry
from counterclip.models.registry import OFFLINE_HINT
from counterclip.models.spec import ModelSpec
from counterclip.models.towers import SplitProjectionRecompute, TowerInternals

LOG = logging.getLogger(__name__)


class HFClipModel(ClipModel):
    """A `ClipModel` over ``transformers.CLIPModel``.

    Loaded with eager attention so explainers can ask the towers for attention probabilities that stay
    in the autograd graph (``output_attentions=True``).
    """

    def __init__(self, spec: ModelSpec, device: torch.device) -> None:
        super().__init__()
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizerFast

        self.spec = spec
        self.device = device
        source = spec.name
        local = Path(source).expanduser()
        if spec.source == "local":
            if not local.is_dir():
                raise ModelLoadError(f"Hugging Face model directory not found: {local}")
            if not (local / "config.json").is_file():
                raise ModelLoadError(
                    f"{local} has no config.json: not a saved Hugging Face CLIPModel directory"
                )
            source = str(local)
        try:
            module = CLIPModel.from_pretrained(source, attn_implementation="eager")
            self._image_processor = CLIPImageProcessor.from_pretrained(source)
            self._tokenizer = CLIPTokenizerFast.from_pretrained(source)
        except OSError as exc:
            if spec.source == "hub":
                raise ModelLoadError(
                    f"could not fetch {spec.name!r} from the Hugging Face hub; {OFFLINE_HINT}"
                ) from exc
            raise ModelLoadError(
                f"could not load a CLIPModel from {source}: {str(exc).splitlines()[0]}"
            ) from exc
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ModelLoadError(f"{source} is not a loadable CLIPModel: {str(exc).splitlines()[0]}") from exc
        self.module: nn.Module = module.to(device).eval()
        self.context_length = int(module.config.text_config.max_position_embeddings)
        self.embed_dim = int(module.config.projection_dim)

    # --- inputs -------------------------------------------------------------------------------
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self._image_processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        encoded = self._tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
        )
        return encoded["input_ids"]

    def token_strings(self, text: str) -> list[str]:
        tokens = self._tokenizer.tokenize(text)[: self.context_length - 2]
        return [t.replace("</w>", "") for t in tokens]

    # --- features -----------------------------------------------------------------------------
    def image_features(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        pooled = self.module.vision_model(pixel_values=pixels).pooler_output
        emb = self.module.visual_projection(pooled)
        return nn.functional.normalize(emb, dim=-1) if normalize else emb

    def text_features(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        # CLIP's text tower is causal and pools at end-of-text, so padding after it cannot change the result.
        pooled = self.module.text_model(input_ids=tokens).pooler_output
        emb = self.module.text_projection(pooled)
        return nn.functional.normalize(emb, dim=-1) if normalize else emb

    @property
    def logit_scale(self) -> float:
        return float(self.module.logit_scale.detach().exp().item())

    # --- geometry for explainers --------------------------------------------------------------
    @property
    def vision_geometry(self) -> VisionGeometry:
        cfg = self.module.config.vision_config
        size, patch = int(cfg.image_size), int(cfg.patch_size)
        return VisionGeometry((size, size), (patch, patch), (size // patch, size // patch), 1)

    def image_tower(self) -> TowerInternals:
        geometry = self.vision_geometry
        return self._tower(self.module.vision_model, geometry.grid_size, geometry.num_prefix_tokens)

    def text_tower(self) -> TowerInternals:
        return self._tower(self.module.text_model)

    @staticmethod
    def _tower(tower: nn.Module, grid: tuple[int, int] | None = None, prefix: int = 0) -> TowerInternals:
        """``CLIPEncoderLayer`` blocks: ``layer_norm1`` -> ``self_attn`` (``CLIPAttention``), batch first."""
        return TowerInternals(
            tower,
            tuple(tower.encoder.layers),
            attention_of=lambda block: block.self_attn,
            recompute=SplitProjectionRecompute(),
            norm_of=lambda block: block.layer_norm1,
            grid=grid,
            prefix_tokens=prefix,
        )

    def token_embedding(self) -> nn.Module:
        return self.module.text_model.embeddings.token_embedding

    def eot_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        eos = self.module.config.text_config.eos_token_id
        if eos == 2:  # old configs: the end-of-text token is the largest id (transformers does the same)
            return tokens.to(torch.int).argmax(dim=-1)
        return (tokens.to(torch.int) == eos).to(torch.int).argmax(dim=-1)
