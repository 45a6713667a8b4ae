"""What the index check scripts share: the photos they index and the comparison with a clean build."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def noise_image(seed: int, size: tuple[int, int] = (72, 64)):  # noqa: ANN201 - a PIL image
    """A seeded photo-like image: 4x4 colour blocks plus noise (decodes and embeds like a photo)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    blocks = np.kron(base, np.ones((h // 4 + 1, w // 4 + 1, 1), dtype=np.uint8))[:h, :w]
    noise = rng.integers(-20, 21, size=(h, w, 3))
    return Image.fromarray(np.clip(blocks.astype(int) + noise, 0, 255).astype(np.uint8))


def snapshot(index_dir: Path) -> dict[str, Any]:
    """The current generation's content: path -> (id, vector, sha256), caption -> vector, errors."""
    from counterclip.index_builder import Index

    with Index.open(index_dir) as idx:
        vectors = idx.images.vectors(idx.images.ids)
        images = {
            m["path"]: (m["id"], vectors[i], m["sha256"])
            for i, m in enumerate(idx.images.meta(idx.images.ids))
        }
        cvec = idx.captions.vectors(idx.captions.ids)
        captions = {m["text"]: cvec[i] for i, m in enumerate(idx.captions.meta(idx.captions.ids))}
        errors = {e["path"]: e["reason"] for e in idx.errors()}
        return {"generation": idx.generation, "images": images, "captions": captions, "errors": errors}


def same(a: dict[str, Any], b: dict[str, Any], same_ids: bool = True) -> bool:
    """Two snapshots hold the same files, captions, errors and vectors (and ids, with ``same_ids``)."""
    if sorted(a["images"]) != sorted(b["images"]) or a["errors"] != b["errors"]:
        return False
    if sorted(a["captions"]) != sorted(b["captions"]):
        return False
    for path, (id_a, vec_a, sha_a) in a["images"].items():
        id_b, vec_b, sha_b = b["images"][path]
        if (same_ids and id_a != id_b) or sha_a != sha_b or not np.allclose(vec_a, vec_b, atol=2e-5):
            return False
    return all(np.allclose(v, b["captions"][t], atol=2e-5) for t, v in a["captions"].items())
