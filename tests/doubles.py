"""Test doubles for the engine: an in-memory index over hand-built vectors and a colour 'model'.

The colour model embeds an image as the normalised mean colour minus grey, so files on disk have known
embeddings: a test can place a candidate exactly, and changing a file's colour makes it stale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from PIL import Image

from counterclip.scores import PairScore


def colour_vector(rgb: tuple[int, int, int]) -> np.ndarray:
    v = np.asarray(rgb, dtype=np.float32) / 255.0 - 0.5
    return v / np.linalg.norm(v)


class ColourModel:
    """Stands in for a ClipModel where only encode_pil / encode_texts / pair_score are used."""

    embed_dim = 3
    logit_scale = 10.0
    pair_score = PairScore(10.0)
    fingerprint = "colour-model"
    spec = "colour-model"
    calibration = None

    def __init__(self, texts: dict[str, np.ndarray]) -> None:
        self.texts = texts
        self.image_encodes = 0

    def encode_pil(self, images: list[Image.Image]) -> torch.Tensor:
        self.image_encodes += len(images)
        means = [
            np.asarray(im.convert("RGB"), dtype=np.float32).reshape(-1, 3).mean(0) / 255.0 - 0.5
            for im in images
        ]
        out = np.stack([m / np.linalg.norm(m) for m in means])
        return torch.from_numpy(out.astype(np.float32))

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.texts[t] for t in texts]).astype(np.float32))


class ArrayCollection:
    """One collection of the test index: exact FAISS inner-product search, metadata in a dict."""

    def __init__(self, name: str, root: Path, table: dict[int, tuple[str, np.ndarray]]) -> None:
        self.name = name
        self.root = root
        self._table = table
        self.ids = np.array(sorted(table), dtype=np.int64)
        self._faiss = faiss.IndexIDMap2(faiss.IndexFlatIP(3))
        if table:
            self._faiss.add_with_ids(np.stack([table[i][1] for i in self.ids]).astype(np.float32), self.ids)

    @property
    def count(self) -> int:
        return len(self.ids)

    def vectors(self, ids) -> np.ndarray:
        if not len(ids):
            return np.zeros((0, 3), np.float32)
        return np.stack([self._table[int(i)][1] for i in ids]).astype(np.float32)

    def search(self, xq: np.ndarray, k: int):
        return self._faiss.search(np.ascontiguousarray(xq, dtype=np.float32), k)

    def meta(self, ids) -> list[dict[str, Any]]:
        if self.name == "captions":
            return [
                {"id": int(i), "text": self._table[int(i)][0], "source": "vocab", "image_id": None}
                for i in ids
            ]
        for i in ids:
            if int(i) not in self._table:
                raise KeyError(f"unknown image id {int(i)}")
        return [
            {
                "id": int(i),
                "path": self._table[int(i)][0],
                "abs_path": str(self.root / self._table[int(i)][0]),
            }
            for i in ids
        ]


class ArrayIndex:
    """The engine's IndexLike over arrays: two `ArrayCollection`s."""

    def __init__(
        self,
        root: Path,
        images: dict[int, tuple[str, np.ndarray]],
        captions: dict[int, tuple[str, np.ndarray]],
    ) -> None:
        self.root = root
        self.dim = 3
        self.images = ArrayCollection("images", root, images)
        self.captions = ArrayCollection("captions", root, captions)
        self.calibration = None  # no known pairs

    def image_id_for_path(self, path) -> int | None:
        rel = (
            str(Path(path).resolve().relative_to(self.root.resolve()))
            if Path(path).is_absolute()
            else str(path)
        )
        return next((int(i) for i in self.images.ids if self.images.meta([i])[0]["path"] == rel), None)


def make_colour_index(
    root: Path,
    colours: dict[int, tuple[int, int, int]],
    captions: dict[int, tuple[str, np.ndarray]] | None = None,
) -> ArrayIndex:
    """Write one solid-colour PNG per id and index its colour vector."""
    images = {}
    for item_id, rgb in colours.items():
        name = f"img{item_id:03d}.png"
        Image.new("RGB", (8, 8), rgb).save(root / name)
        images[item_id] = (name, colour_vector(rgb))
    return ArrayIndex(root, images, captions or {})


def colour_texts_table() -> dict[str, np.ndarray]:
    """Texts the colour model knows."""
    return {
        "red": colour_vector((255, 0, 0)),
        "green": colour_vector((0, 255, 0)),
        "blue": colour_vector((0, 0, 255)),
        "grey-blue": colour_vector((90, 90, 200)),
    }
