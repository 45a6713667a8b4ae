"""Shared plumbing: model-state guard, the [0, 1] pixel <-> model-input codec, prepared inputs, maps,
block selection."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from counterclip.errors import InputError
from counterclip.models.base import ClipModel


@contextlib.contextmanager
def model_guard(model: ClipModel) -> Iterator[None]:
    """Run a block with the model in eval mode and gradients enabled; restore every flag afterwards.

    Train/eval flags of every submodule and ``requires_grad`` of every parameter come back as they were,
    also when the block raises. Explainers take gradients with ``torch.autograd.grad`` on chosen tensors,
    so parameter ``.grad`` fields are never written.
    """
    modes = [(m, m.training) for m in model.module.modules()]
    flags = [(p, p.requires_grad) for p in model.module.parameters()]
    try:
        model.module.eval()  # dropout would make maps random
        with torch.enable_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training
        for param, requires_grad in flags:
            param.requires_grad_(requires_grad)


@dataclass(frozen=True)
class PixelCodec:
    """Affine map between ``[0, 1]`` RGB pixels and the model's normalised input, derived from `preprocess`.

    Probing the model's own transform with a black and a white image gives ``mean`` and ``std`` per channel
    for any backend, so pixel-space edits can be clamped to valid values.

    Attributes:
        size: ``(H, W)`` the image tower expects.
        mean / std: ``(3,)`` per-channel constants: ``model_input = (pixels - mean) / std``.
    """

    size: tuple[int, int]
    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def of(cls, model: ClipModel) -> PixelCodec:
        """Derive the codec from ``model.preprocess``."""
        h, w = model.vision_geometry.image_size
        black = model.preprocess(Image.new("RGB", (w, h), (0, 0, 0)))
        white = model.preprocess(Image.new("RGB", (w, h), (255, 255, 255)))
        std = 1.0 / (white[:, 0, 0] - black[:, 0, 0]).double()
        mean = -black[:, 0, 0].double() * std
        return cls((int(h), int(w)), mean.float(), std.float())

    def to_model(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(n, 3, H, W)`` in [0, 1] -> model input (differentiable)."""
        mean = self.mean.to(pixels.device, pixels.dtype).view(1, 3, 1, 1)
        std = self.std.to(pixels.device, pixels.dtype).view(1, 3, 1, 1)
        return (pixels - mean) / std

    def pil_to_pixels(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> ``(1, 3, H, W)`` float32 in [0, 1] at the model's size (squashed, never cropped).

        Squashing instead of the model's centre crop keeps every input pixel, so a map upsampled back to
        the image's own size lines up exactly.
        """
        rgb = image.convert("RGB")
        if rgb.size != (self.size[1], self.size[0]):
            rgb = rgb.resize((self.size[1], self.size[0]), Image.BICUBIC)
        array = np.asarray(rgb, dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def pixels_to_pil(pixels: torch.Tensor) -> Image.Image:
    """``(1, 3, H, W)`` or ``(3, H, W)`` in [0, 1] -> 8-bit PIL image (rounded)."""
    tensor = pixels.detach().float().cpu()
    if tensor.dim() == 4:
        tensor = tensor[0]
    array = (tensor.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(array)


@dataclass
class PreparedInputs:
    """An (image, texts) pair ready for the model.

    Attributes:
        image: the caller's PIL image (never modified).
        pixels: ``(1, 3, H, W)`` [0, 1] pixels at the model's size.
        texts: the texts (one caption, or a label set).
        tokens: ``(m, L)`` token ids on the model's device.
        codec: the pixel codec.
    """

    image: Image.Image
    pixels: torch.Tensor
    texts: list[str]
    tokens: torch.Tensor
    codec: PixelCodec


def prepare(model: ClipModel, image: Image.Image, text: str | Sequence[str]) -> PreparedInputs:
    """Check and convert user inputs (a PIL image and one text or a non-empty list of texts)."""
    if not isinstance(image, Image.Image):
        raise InputError(f"image must be a PIL image, got {type(image).__name__}")
    texts = [text] if isinstance(text, str) else list(text)
    if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
        raise InputError("text must be a non-empty string (or a list of non-empty strings)")
    codec = PixelCodec.of(model)
    pixels = codec.pil_to_pixels(image).to(model.device)
    tokens = model.tokenize(texts).to(model.device)
    return PreparedInputs(image, pixels, texts, tokens, codec)


def upsample(
    grid_map: np.ndarray | torch.Tensor, size: tuple[int, int], mode: str = "bilinear"
) -> np.ndarray:
    """``(gh, gw)`` map -> ``(H, W)`` float64 numpy map (bilinear, corners aligned to cell centres)."""
    tensor = torch.as_tensor(np.asarray(grid_map, dtype=np.float32)).view(1, 1, *np.shape(grid_map))
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(tensor, size=size, mode=mode, **kwargs)[0, 0].double().numpy()


def pool_to_grid(pixel_map: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` map -> ``(gh, gw)`` mean over cells (adaptive average pooling)."""
    tensor = torch.as_tensor(np.asarray(pixel_map, dtype=np.float64)).view(1, 1, *pixel_map.shape)
    return F.adaptive_avg_pool2d(tensor, grid)[0, 0].numpy()


def image_grid(model: ClipModel) -> tuple[int, int]:
    """The ViT patch grid, or an 8x8 grid for conv towers (used to pool pixel maps into cells)."""
    grid = model.vision_geometry.grid_size
    return (int(grid[0]), int(grid[1])) if grid is not None else (8, 8)


@dataclass
class Cost:
    """Counts forward/backward passes and wall time of one explanation."""

    forward: int = 0
    backward: int = 0
    started: float = field(default_factory=time.perf_counter)

    @property
    def seconds(self) -> float:
        """Seconds since the counter started."""
        return time.perf_counter() - self.started


def text_embedding(model: ClipModel, tokens: torch.Tensor) -> torch.Tensor:
    """Constant (no-graph) text embeddings ``(m, d)``."""
    with torch.no_grad():
        return model.text_features(tokens).detach()


def image_embedding(model: ClipModel, codec: PixelCodec, pixels: torch.Tensor) -> torch.Tensor:
    """Constant (no-graph) image embeddings ``(n, d)`` for [0, 1] pixels."""
    with torch.no_grad():
        return model.image_features(codec.to_model(pixels)).detach()


def select_blocks(count: int, blocks: int | Sequence[int] | None) -> list[int]:
    """Indices of the blocks to use: None = all, an int k = the last k, a sequence = those indices."""
    if count == 0:
        raise InputError(
            "this tower has no transformer blocks (a conv tower?): use --method gradcam, ig or lime"
        )
    if blocks is None:
        return list(range(count))
    if isinstance(blocks, int):
        if blocks < 1:
            raise InputError(f"--blocks must be at least 1, got {blocks}")
        return list(range(max(0, count - blocks), count))
    chosen = sorted({b % count for b in blocks})
    if not chosen:
        raise InputError("no blocks selected")
    return chosen
