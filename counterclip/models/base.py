"""The one protocol every CLIP backend implements: `ClipModel`.

Backends differ only in how they build the torch module, preprocess, tokenize, and where their
towers keep the pieces explainers need (`TowerInternals`, `TextPositions`). Everything else (batching,
normalisation, inference mode, fingerprints) lives here once.
"""

from __future__ import annotations

import abc
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from counterclip.errors import ModelLoadError
from counterclip.models.spec import ModelSpec
from counterclip.models.towers import TowerInternals
from counterclip.scores import PairScore

LOG = logging.getLogger(__name__)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything else is passed to `torch.device`.

    A device string torch does not know, or a CUDA device on a machine without one, is a one-line
    `ModelLoadError` naming the choices.
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ModelLoadError(
            f"unknown device {device!r}; use auto, cpu, cuda or cuda:N (e.g. --device cuda)"
        ) from None
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"--device {device}: no CUDA GPU on this machine (torch sees none); use --device cpu or auto"
            )
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise ModelLoadError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                f"numbered from 0; use --device cuda:0 or auto"
            )
    return chosen


def weights_fingerprint(module: nn.Module) -> str:
    """A stable hash of a module's weights: equal for equal weights, different after any change.

    Hashes every state-dict entry's name, dtype, shape and bytes in name order, so it does not depend on
    the device or on the order parameters were registered in.
    """
    digest = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous().reshape(-1)
        digest.update(name.encode())
        digest.update(str(tuple(state[name].shape)).encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:32]


@dataclass(frozen=True)
class VisionGeometry:
    """Where the image tower keeps what explainers need."""

    image_size: tuple[int, int]  # (H, W) the tower expects
    patch_size: tuple[int, int] | None  # ViT patch size, None for conv towers
    grid_size: tuple[int, int] | None  # ViT patch grid for image_size, None for conv towers
    num_prefix_tokens: int  # class (and register) tokens before the patch tokens


@dataclass(frozen=True)
class TextPositions:
    """Where one tokenized text keeps what explainers read."""

    pooled: int  # the position the text embedding is read from (CLIP: the end-of-text token)
    content: slice  # the text's own tokens (CLIP: between the start and the end-of-text tokens)


class ClipModel(abc.ABC):
    """A CLIP-style model: image and text encoders into one embedding space.

    Attributes:
        spec: the `ModelSpec` that loaded it (JSON round-trips).
        module: the underlying torch module (open_clip ``CLIP`` or HF ``CLIPModel``), in eval mode.
        device: where it runs.
        embed_dim: embedding width ``d``.
        logit_scale: the learned temperature (already exponentiated), as a float.

    Inference methods (`encode_images`, `encode_texts`) run under `torch.inference_mode()` and return
    float32 CPU tensors of shape ``(n, d)``, L2-normalised. The ``*_features`` methods keep the autograd
    graph for explainers and counterfactual optimisation.
    """

    spec: ModelSpec
    module: nn.Module
    device: torch.device
    embed_dim: int
    context_length: int
    family: str = "clip"  # the model family: clip | siglip | blip | slip (see counterclip.models.families)

    def __init__(self) -> None:
        self._fingerprint: str | None = None
        self.calibration = None  # a `counterclip.calibration.Calibration` shipped with the weights, if any

    # --- backend hooks -------------------------------------------------------------------------
    @abc.abstractmethod
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> float tensor ``(3, H, W)`` with the model's own transform."""

    @abc.abstractmethod
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> token ids ``(n, context_length)`` (long)."""

    @abc.abstractmethod
    def image_features(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Differentiable image embeddings ``(n, d)`` for pixels ``(n, 3, H, W)`` on `device`."""

    @abc.abstractmethod
    def text_features(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Differentiable text embeddings ``(n, d)`` for token ids ``(n, L)`` on `device`."""

    @property
    @abc.abstractmethod
    def logit_scale(self) -> float:
        """exp(learned log temperature)."""

    @property
    def pair_score(self) -> PairScore:
        """The model's pair score (`counterclip.scores.PairScore`): every score in counterclip is this one.

        CLIP families: ``logit_scale * cos``; a family with a bias or an absolute (sigmoid) reading
        overrides this property.
        """
        return PairScore(scale=self.logit_scale)

    @property
    @abc.abstractmethod
    def vision_geometry(self) -> VisionGeometry:
        """Input size and patch grid of the image tower."""

    @abc.abstractmethod
    def image_tower(self) -> TowerInternals:
        """The image tower's internals: blocks, attention recompute, norms, layout, patch grid, CAM layers."""

    @abc.abstractmethod
    def text_tower(self) -> TowerInternals:
        """The text tower's internals (blocks, attention recompute, norms, layout)."""

    @abc.abstractmethod
    def token_embedding(self) -> nn.Module:
        """The text tower's token-embedding layer (for layer attributions over tokens)."""

    @abc.abstractmethod
    def eot_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """Index of the end-of-text token in each row of ``tokens`` (the text embedding is read there)."""

    def text_positions(self, tokens: torch.Tensor) -> list[TextPositions]:
        """Per row of ``tokens (n, L)``: where the embedding is read and where the text's own tokens are.

        CLIP layout: a start token, the text, then the end-of-text token the embedding is read from. A
        family with another layout (BERT reads ``[CLS]`` at 0) overrides this.
        """
        return [TextPositions(int(eot), slice(1, int(eot))) for eot in self.eot_positions(tokens)]

    @abc.abstractmethod
    def token_strings(self, text: str) -> list[str]:
        """Human-readable tokens of ``text`` in order, aligned with the ids between start and end tokens."""

    @property
    def rgb_conversion(self) -> str:
        """How the family's own library turns a non-RGB image into RGB, as a rule name of
        `counterclip.index_builder.decode.RGB_RULES`: an index decodes its files by it, so the model sees
        the pixels its library would give it. Default ``pillow`` (``Image.convert("RGB")``: open_clip's
        and torchvision's transforms)."""
        return "pillow"

    def match_head(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray | None:
        """The model's own image-text matching probability per pair (a second verifier), or None.

        Args:
            images: ``n`` PIL images.
            texts: ``n`` texts; pair ``i`` is ``(images[i], texts[i])``.

        Returns:
            ``(n,)`` float64 probabilities that each pair matches, from a head that reads image and text
            together (BLIP's image-text matching head); None for families without one (the default).
        """
        return None

    # --- shared behaviour ----------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """Stable hash of the weights (computed once per load)."""
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.module)
        return self._fingerprint

    def preprocess_batch(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Several PIL images -> ``(n, 3, H, W)``."""
        return torch.stack([self.preprocess(im) for im in images])

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Embed preprocessed images.

        Args:
            pixels: ``(n, 3, H, W)`` or a single ``(3, H, W)`` tensor from `preprocess`.
            batch_size: images per forward pass. Default: 64.

        Returns:
            float32 CPU tensor ``(n, d)`` (or ``(d,)`` for a single image), L2-normalised.
        """
        single = pixels.dim() == 3
        if single:
            pixels = pixels.unsqueeze(0)
        chunks = [
            self.image_features(pixels[i : i + batch_size].to(self.device, torch.float32)).float().cpu()
            for i in range(0, len(pixels), batch_size)
        ]
        out = torch.cat(chunks) if chunks else torch.empty(0, self.embed_dim)
        return out[0] if single else out

    @torch.inference_mode()
    def encode_texts(self, texts: str | Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Embed texts: a list gives ``(n, d)``, a single string gives ``(d,)``; float32 CPU, L2-normalised."""
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        chunks = []
        for i in range(0, len(items), batch_size):
            tokens = self.tokenize(items[i : i + batch_size]).to(self.device)
            chunks.append(self.text_features(tokens).float().cpu())
        out = torch.cat(chunks) if chunks else torch.empty(0, self.embed_dim)
        return out[0] if single else out

    def encode_pil(self, images: Sequence[Image.Image], batch_size: int = 64) -> torch.Tensor:
        """Convenience: preprocess and embed PIL images -> ``(n, d)``."""
        return self.encode_images(self.preprocess_batch(images), batch_size=batch_size)

    def score(
        self, image_emb: torch.Tensor | np.ndarray, text_emb: torch.Tensor | np.ndarray
    ) -> torch.Tensor:
        """`pair_score` of normalised embeddings: ``(n, d), (m, d) -> (n, m)``; ``(n, d), (d,) -> (n,)``."""
        a = torch.as_tensor(image_emb, dtype=torch.float32)
        b = torch.as_tensor(text_emb, dtype=torch.float32)
        return self.pair_score.matrix(a, b) if b.dim() == 2 else self.pair_score.against(a, b)

    def runtime_info(self) -> dict[str, Any]:
        """What runs the model, for the index manifest (the same keys as `OnnxEncoder.runtime_info`)."""
        return {
            "runtime": "torch",
            "version": torch.__version__,
            "device": str(self.device),
            "precision": {"image": "fp32", "text": "fp32"},
            "threads": torch.get_num_threads(),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(spec={str(self.spec)!r}, d={self.embed_dim}, device={self.device})"
