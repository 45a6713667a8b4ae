"""SigLIP through Hugging Face ``SiglipModel`` (``hf:DIR_OR_ID`` whose config.json says ``siglip``).

SigLIP's score is not CLIP's: ``exp(logit_scale) * cos + logit_bias`` read through a sigmoid, an absolute
match probability per pair (`PairScore` with ``link="sigmoid"``), so the engine's verdicts use the model's
own probability. Two things differ from CLIP in the towers:

- the text is padded to the full context with the pad token (the same id as end-of-text) and read at the
  last position, which attends to every token (no causal mask, no padding mask: SigLIP was trained that
  way, and open_clip runs it the same way). So the text's own tokens are the ones before the first
  end-of-text token, and the embedding is read at ``L - 1``. A checkpoint whose tokenizer hands the model
  an attention mask (``model_input_names``) gets one, as ``model(**processor(...))`` would: the padding
  after the first end-of-text token masked;
- the image has no class token: a pooling head's learned query attends over the patch tokens (a ``pool``
  readout in `TowerInternals`), and relevance maps read that attention.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from counterclip.errors import ModelLoadError
from counterclip.models.base import TextPositions, VisionGeometry
from counterclip.models.hf_backend import HFModel
from counterclip.models.spec import ModelSpec
from counterclip.models.towers import MultiheadAttentionRecompute, SplitProjectionRecompute, TowerInternals
from counterclip.scores import PairScore


class HFSiglipModel(HFModel):
    """A `ClipModel` over ``transformers.SiglipModel`` (scale, bias, sigmoid)."""

    MODULE = "SiglipModel"
    HEADS = "pooling head, text head and logit scale and bias"
    EXAMPLE = "google/siglip-base-patch16-224"
    family = "siglip"

    def __init__(self, spec: ModelSpec, device: torch.device, config: dict[str, Any] | None = None) -> None:
        super().__init__(spec, device, config)
        cfg = self.module.config
        if not cfg.vision_config.vision_use_head:
            raise ModelLoadError(
                f"{spec.name}: its vision tower has no pooling head (vision_use_head false), so it gives no "
                "image embedding; pass a SiglipModel checkpoint with its head"
            )
        self.context_length = int(cfg.text_config.max_position_embeddings)
        self.embed_dim = int(cfg.text_config.projection_size)
        # the library passes a padding mask exactly when the tokenizer returns one
        self._masks_padding = "attention_mask" in (getattr(self._tokenizer, "model_input_names", None) or ())
        if self.embed_dim != int(cfg.vision_config.hidden_size):
            raise ModelLoadError(
                f"{spec.name}: text embeddings have {self.embed_dim} dimensions but image embeddings "
                f"{cfg.vision_config.hidden_size}; not a SigLIP pair"
            )

    def tokenize(self, texts: list[str] | tuple[str, ...]) -> torch.Tensor:  # type: ignore[override]
        """Padded to the full context with the pad token, as SigLIP was trained (no attention mask)."""
        return self._tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
            return_attention_mask=False,
        )["input_ids"]

    def token_strings(self, text: str) -> list[str]:
        pieces = self._tokenizer.tokenize(text)[: self.context_length - 1]
        return [p.replace("\u2581", "") or p for p in pieces]

    # --- features -----------------------------------------------------------------------------
    def image_features(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        emb = self.module.vision_model(pixel_values=pixels).pooler_output
        return nn.functional.normalize(emb, dim=-1) if normalize else emb

    def text_features(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        mask = self._padding_mask(tokens) if self._masks_padding else None
        emb = self.module.text_model(input_ids=tokens, attention_mask=mask).pooler_output
        return nn.functional.normalize(emb, dim=-1) if normalize else emb

    def _padding_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """1 up to and including the first end-of-text token, 0 after it: the tokenizer's attention mask,
        from the ids alone (so an exported text tower computes it too)."""
        eos = (tokens == self._tokenizer.eos_token_id).to(torch.long)
        after = (torch.cumsum(eos, dim=-1) - eos) > 0
        return (~after).to(torch.long)

    @property
    def logit_scale(self) -> float:
        return float(self.module.logit_scale.detach().exp().item())

    @property
    def pair_score(self) -> PairScore:
        """``exp(logit_scale) * cos + logit_bias``, a sigmoid: SiglipModel's own ``logits_per_image``."""
        return PairScore(self.logit_scale, float(self.module.logit_bias.detach().item()), "sigmoid")

    # --- geometry for explainers --------------------------------------------------------------
    @property
    def vision_geometry(self) -> VisionGeometry:
        return self.vit_geometry(self.module.config.vision_config, 0)

    def image_tower(self) -> TowerInternals:
        vision = self.module.vision_model
        return TowerInternals(
            vision,
            tuple(vision.encoder.layers),
            attention_of=lambda block: block.self_attn,
            recompute=SplitProjectionRecompute(),
            norm_of=lambda block: block.layer_norm1,
            grid=self.vision_geometry.grid_size,
            prefix_tokens=0,
            readout="pool",
            pool=vision.head.attention,
            pool_recompute=MultiheadAttentionRecompute(cross=True),
        )

    def text_tower(self) -> TowerInternals:
        text = self.module.text_model
        return TowerInternals(
            text,
            tuple(text.encoder.layers),
            attention_of=lambda block: block.self_attn,
            recompute=SplitProjectionRecompute(),
            norm_of=lambda block: block.layer_norm1,
        )

    def token_embedding(self) -> nn.Module:
        return self.module.text_model.embeddings.token_embedding

    def eot_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """SigLIP reads the last position (end-of-text or padding, which attend to the whole text)."""
        return torch.full((tokens.shape[0],), tokens.shape[1] - 1, dtype=torch.long, device=tokens.device)

    def text_positions(self, tokens: torch.Tensor) -> list[TextPositions]:
        """Read at ``L - 1``; the text's own tokens run from the start (after a start token, if the
        tokenizer adds one) to the first end-of-text token."""
        return fixed_readout_positions(tokens, self._tokenizer.bos_token_id, self._tokenizer.eos_token_id)


def fixed_readout_positions(tokens: torch.Tensor, bos: int | None, eos: int | None) -> list[TextPositions]:
    """Per row: embedding read at the last position; content after an optional start token, up to the
    first end-of-text token (the whole row when there is none)."""
    length = tokens.shape[1]
    out = []
    for row in tokens.tolist():
        start = 1 if bos is not None and row and row[0] == bos else 0
        end = row.index(eos, start) if eos is not None and eos in row[start:] else length
        out.append(TextPositions(length - 1, slice(start, end)))
    return out
