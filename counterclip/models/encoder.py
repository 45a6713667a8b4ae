"""`Encoder`: what the build pipeline and the engine need from a model to embed, whatever runs it.

A `ClipModel` (torch) satisfies it, and so does `OnnxEncoder` (ONNX Runtime). Code that only embeds
(building, plain search, encoding a query) takes an `Encoder`; code that needs gradients (target
embeddings by gradient ascent, explainers) takes a `ClipModel`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from PIL import Image

from counterclip.models.spec import ModelSpec


@runtime_checkable
class Encoder(Protocol):
    """Embeds preprocessed images and texts into one space (float32 CPU tensors, L2-normalised)."""

    spec: ModelSpec
    embed_dim: int

    @property
    def fingerprint(self) -> str:
        """Hash of the model's weights (the index records it)."""
        ...

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> ``(3, H, W)`` with the model's own transform."""
        ...

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> token ids ``(n, context_length)``."""
        ...

    def encode_images(self, pixels: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """``(n, 3, H, W)`` -> ``(n, d)`` (a single ``(3, H, W)`` gives ``(d,)``)."""
        ...

    def encode_texts(self, texts: str | Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """A list gives ``(n, d)``, a single string ``(d,)``."""
        ...

    def runtime_info(self) -> dict[str, Any]:
        """What runs the model (runtime, version, precision, ...), for the index manifest."""
        ...
