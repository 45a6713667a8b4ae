"""BLIP through Hugging Face ``BlipForImageTextRetrieval`` (``hf:DIR_OR_ID`` whose config.json says ``blip``).

Not ``BlipModel``: its projections are untrained copies in the released checkpoints. The retrieval model
has two heads, and counterclip uses both:

- the contrastive head, for the index, the gradient path and every score: the vision CLS token through
  ``vision_proj`` and the text CLS token through ``text_proj``, normalised; the pair score is their plain
  cosine, exactly ``BlipForImageTextRetrieval(..., use_itm_head=False)`` (the checkpoints carry no learned
  temperature, so `PairScore` has scale 1);
- the image-text matching head, a cross-encoder (the text encoder attends to the image tokens, one forward
  per pair): `match_head` gives its match probability, the second verifier of ``--verify-with itm``.

The text tower is BERT: ``[CLS] text [SEP]`` padded with ``[PAD]`` (masked out), post-norm blocks, the
embedding read at ``[CLS]``. Captions are cut at 35 tokens, as BLIP's retrieval training did.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from counterclip.models.base import TextPositions, VisionGeometry
from counterclip.models.hf_backend import HFModel
from counterclip.models.spec import ModelSpec
from counterclip.models.towers import BertSelfAttentionRecompute, FusedQkvRecompute, TowerInternals

BLIP_MAX_TOKENS = 35  # BLIP's retrieval code tokenizes captions with max_length=35
ITM_BATCH = 32  # pairs per forward pass of the matching head


class HFBlipModel(HFModel):
    """A `ClipModel` over ``transformers.BlipForImageTextRetrieval``: contrastive head for scores, the
    matching head as `match_head`."""

    MODULE = "BlipForImageTextRetrieval"
    HEADS = "contrastive and matching heads (vision_proj, text_proj, itm_head)"
    EXAMPLE = "Salesforce/blip-itm-base-coco"
    family = "blip"

    def __init__(self, spec: ModelSpec, device: torch.device, config: dict[str, Any] | None = None) -> None:
        super().__init__(spec, device, config)
        cfg = self.module.config
        self.context_length = min(BLIP_MAX_TOKENS, int(cfg.text_config.max_position_embeddings))
        self.embed_dim = int(self.module.vision_proj.out_features)
        self._pad_id = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else 0

    def token_strings(self, text: str) -> list[str]:
        return list(self._tokenizer.tokenize(text)[: self.context_length - 2])

    def _attention_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        return (tokens != self._pad_id).to(torch.long)

    # --- features -----------------------------------------------------------------------------
    def image_features(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        cls = self.module.vision_model(pixel_values=pixels).last_hidden_state[:, 0, :]
        emb = self.module.vision_proj(cls)
        return nn.functional.normalize(emb, dim=-1) if normalize else emb

    def text_features(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        hidden = self.module.text_encoder(
            input_ids=tokens, attention_mask=self._attention_mask(tokens)
        ).last_hidden_state
        emb = self.module.text_proj(hidden[:, 0, :])
        return nn.functional.normalize(emb, dim=-1) if normalize else emb

    @property
    def logit_scale(self) -> float:
        """1.0: the contrastive head's score is the plain cosine (no temperature ships with the weights)."""
        return 1.0

    @torch.inference_mode()
    def match_head(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        """p(match) of the image-text matching head for each ``(images[i], texts[i])``: ``(n,)`` float64."""
        if len(images) != len(texts):
            raise ValueError(f"match_head needs one text per image, got {len(images)} and {len(texts)}")
        out = []
        for start in range(0, len(images), ITM_BATCH):
            pixels = self.preprocess_batch(images[start : start + ITM_BATCH]).to(self.device)
            tokens = self.tokenize(texts[start : start + ITM_BATCH]).to(self.device)
            logits = self.module(
                input_ids=tokens,
                pixel_values=pixels,
                attention_mask=self._attention_mask(tokens),
                use_itm_head=True,
            ).itm_score
            out.append(torch.softmax(logits.float(), dim=-1)[:, 1].double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    # --- geometry for explainers --------------------------------------------------------------
    @property
    def vision_geometry(self) -> VisionGeometry:
        return self.vit_geometry(self.module.config.vision_config, 1)

    def image_tower(self) -> TowerInternals:
        vision = self.module.vision_model
        return TowerInternals(
            vision,
            tuple(vision.encoder.layers),
            attention_of=lambda block: block.self_attn,
            recompute=FusedQkvRecompute("projection", returns_weights=True),
            norm_of=lambda block: block.layer_norm1,
            grid=self.vision_geometry.grid_size,
            prefix_tokens=1,
        )

    def text_tower(self) -> TowerInternals:
        """BERT blocks: self-attention (``attention.self``) reads the block input (post-norm blocks)."""
        encoder = self.module.text_encoder
        return TowerInternals(
            encoder,
            tuple(encoder.encoder.layer),
            attention_of=lambda block: block.attention.self,
            recompute=BertSelfAttentionRecompute(),
            norm_of=None,
        )

    def token_embedding(self) -> nn.Module:
        """BERT's whole embedding layer (word + position embeddings, LayerNorm), per token: its word
        embeddings' output is changed in place inside it, so attributions hook the layer's output instead."""
        return self.module.text_encoder.embeddings

    def eot_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """BLIP reads the text embedding at ``[CLS]`` (position 0)."""
        return torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)

    def text_positions(self, tokens: torch.Tensor) -> list[TextPositions]:
        """Read at ``[CLS]``; the text's own tokens run from 1 to the ``[SEP]`` token."""
        sep = self._tokenizer.sep_token_id
        out = []
        for row in tokens.tolist():
            end = row.index(sep, 1) if sep in row[1:] else len(row)
            out.append(TextPositions(0, slice(1, end)))
        return out
