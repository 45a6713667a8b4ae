"""Test doubles for the CLIP explainers: a hand-set one-patch ViT behind the `ClipModel` protocol."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from open_clip.transformer import ResidualAttentionBlock
from PIL import Image
from torch import nn

from counterclip.models.base import ClipModel, VisionGeometry
from counterclip.models.open_clip_backend import resblocks_tower
from counterclip.models.spec import ModelSpec
from counterclip.models.towers import TowerInternals

WIDTH = 8  # token width: 0-2 patch mean RGB, 3 "target patch" flag, 4 "class token" flag, 5-7 values
GRID = 4  # 32 px image, 8 px patches


class _OnePatchTower(nn.Module):
    """A one-block ViT whose class token attends (softmax ~ 1 - 1e-15) to a single patch only."""

    def __init__(self, patch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, WIDTH, kernel_size=8, stride=8)
        self.class_embedding = nn.Parameter(torch.zeros(WIDTH))
        self.positional_embedding = nn.Parameter(torch.zeros(GRID * GRID + 1, WIDTH))
        block = ResidualAttentionBlock(WIDTH, n_head=1, batch_first=True)
        block.ln_1, block.ln_2 = nn.Identity(), nn.Identity()
        self.blocks = nn.ModuleList([block])
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            for c in range(3):
                self.conv.weight[c, c] = 1.0 / 64.0  # channel c -> mean of colour c over the patch
            self.class_embedding[4] = 1.0
            self.positional_embedding[1 + patch, 3] = 1.0
            attn = block.attn
            attn.in_proj_weight.zero_()
            attn.in_proj_bias.zero_()
            attn.in_proj_weight[0, 4] = 10.0  # query of the class token
            attn.in_proj_weight[WIDTH + 0, 3] = 10.0  # key of the target patch
            for c in range(3):
                attn.in_proj_weight[2 * WIDTH + 5 + c, c] = 1.0  # value: the patch colour, moved to 5-7
            attn.out_proj.weight.copy_(torch.eye(WIDTH))
            attn.out_proj.bias.zero_()
            for linear in (block.mlp.c_fc, block.mlp.c_proj):
                linear.weight.zero_()
                linear.bias.zero_()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.conv(pixels).flatten(2).transpose(1, 2)  # (n, 16, W)
        cls = self.class_embedding.expand(x.shape[0], 1, WIDTH)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        for block in self.blocks:
            x = block(x)
        return x[:, 0, [5, 6, 7, 4]]  # (n, 4): the attended colour and a constant


class OnePatchModel(ClipModel):
    """A `ClipModel` test double: the image embedding depends on patch ``patch`` only (to ~1e-15).

    Preprocess is plain ``[0, 1]`` pixels; every text embeds to ``(1, 1, 1, 0) / sqrt(3)``, so the pair
    score rises with the brightness of the target patch.
    """

    def __init__(self, patch: int) -> None:
        super().__init__()
        self.spec = ModelSpec(backend="open_clip", name="one-patch-double")
        self.device = torch.device("cpu")
        self.embed_dim = 4
        self.context_length = 4
        self.patch = patch
        self.module = nn.Module()
        self.module.visual = _OnePatchTower(patch)
        self.module.text_vector = nn.Parameter(torch.tensor([1.0, 1.0, 1.0, 0.0]) / 3**0.5)
        self.module.eval()

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        array = np.asarray(image.convert("RGB").resize((32, 32)), dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return torch.zeros(len(texts), self.context_length, dtype=torch.long)

    def token_strings(self, text: str) -> list[str]:
        return text.split()

    def image_features(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        emb = self.module.visual(pixels)
        return nn.functional.normalize(emb, dim=-1) if normalize else emb

    def text_features(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.module.text_vector.expand(tokens.shape[0], 4)

    @property
    def logit_scale(self) -> float:
        return 10.0

    @property
    def vision_geometry(self) -> VisionGeometry:
        return VisionGeometry((32, 32), (8, 8), (GRID, GRID), 1)

    def image_tower(self) -> TowerInternals:
        return resblocks_tower(self.module.visual, self.module.visual.blocks, (GRID, GRID), 1)

    def text_tower(self) -> TowerInternals:
        return TowerInternals(self.module)  # no text transformer: every text embeds to one vector

    def token_embedding(self) -> nn.Module:
        raise NotImplementedError("the one-patch double has no text tower")

    def eot_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.zeros(tokens.shape[0], dtype=torch.long)


def patch_image(bright: int, background: str = "random", seed: int = 0) -> Image.Image:
    """A 32x32 image: patch ``bright`` (row-major on the 4x4 grid) light, the rest random or dark."""
    rng = np.random.default_rng(seed)
    if background == "random":
        array = rng.integers(20, 236, size=(32, 32, 3)).astype(np.uint8)
    else:
        array = np.full((32, 32, 3), 25, dtype=np.uint8)
    row, col = divmod(bright, GRID)
    array[row * 8 : row * 8 + 8, col * 8 : col * 8 + 8] = 230
    return Image.fromarray(array)
