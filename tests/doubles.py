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


def colour_vector(rgb: tuple[int, int, int]) -> np.ndarray:
    v = np.asarray(rgb, dtype=np.float32) / 255.0 - 0.5
    return v / np.linalg.norm(v)


class ColourModel:
    """Stands in for a ClipModel where only encode_pil / encode_texts / logit_scale are used."""

    embed_dim = 3
    logit_scale = 10.0

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


class ArrayIndex:
    """The engine's IndexLike over arrays: exact FAISS inner-product search, metadata in dicts."""

    def __init__(
        self,
        root: Path,
        images: dict[int, tuple[str, np.ndarray]],
        captions: dict[int, tuple[str, np.ndarray]],
    ) -> None:
        self.root = root
        self.dim = 3
        self._images = images
        self._captions = captions
        self._faiss = {}
        for kind, table in (("image", images), ("caption", captions)):
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(3))
            if table:
                ids = np.array(sorted(table), dtype=np.int64)
                index.add_with_ids(np.stack([table[i][1] for i in ids]).astype(np.float32), ids)
            self._faiss[kind] = index

    def image_ids(self) -> np.ndarray:
        return np.array(sorted(self._images), dtype=np.int64)

    def caption_ids(self) -> np.ndarray:
        return np.array(sorted(self._captions), dtype=np.int64)

    def image_vectors(self, ids) -> np.ndarray:
        return (
            np.stack([self._images[int(i)][1] for i in ids]).astype(np.float32)
            if len(ids)
            else np.zeros((0, 3), np.float32)
        )

    def caption_vectors(self, ids) -> np.ndarray:
        return (
            np.stack([self._captions[int(i)][1] for i in ids]).astype(np.float32)
            if len(ids)
            else np.zeros((0, 3), np.float32)
        )

    def search_images(self, xq: np.ndarray, k: int):
        return self._faiss["image"].search(np.ascontiguousarray(xq, dtype=np.float32), k)

    def search_captions(self, xq: np.ndarray, k: int):
        return self._faiss["caption"].search(np.ascontiguousarray(xq, dtype=np.float32), k)

    def image_meta(self, ids) -> list[dict[str, Any]]:
        return [
            {
                "id": int(i),
                "path": self._images[int(i)][0],
                "abs_path": str(self.root / self._images[int(i)][0]),
            }
            for i in ids
            if int(i) in self._images
        ]

    def caption_meta(self, ids) -> list[dict[str, Any]]:
        return [
            {"id": int(i), "text": self._captions[int(i)][0], "source": "vocab", "image_id": None}
            for i in ids
        ]

    def image_id_for_path(self, path) -> int | None:
        rel = (
            str(Path(path).resolve().relative_to(self.root.resolve()))
            if Path(path).is_absolute()
            else str(path)
        )
        return next((i for i, (p, _) in self._images.items() if p == rel), None)


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
