"""Zero-shot and full-caption accuracy of a CLIP-style model on freshly generated shapes-world images.

Works for any model with the ``counterclip.models`` interface (``preprocess``, ``encode_images``,
``encode_texts``, ``logit_scale``): for the bundled model the targets are in issue 3; for a real CLIP the
numbers are simply whatever they are.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from counterclip.shapes.world import (
    ATTRIBUTES,
    COLOURS,
    FULL_CAPTION,
    HOLDOUT,
    POSITIONS,
    SHAPES,
    SIZES,
    VALUES,
    ShapeAttrs,
    attribute_prompts,
    caption,
    render,
    sample_attrs,
)

LOG = logging.getLogger(__name__)


class EncoderLike(Protocol):
    """The part of ``counterclip.models.ClipModel`` that evaluation uses."""

    def preprocess(self, image: Image.Image) -> torch.Tensor: ...  # (3, H, W) float32

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor: ...  # (n, d) L2-normalised

    def encode_texts(self, texts: list[str]) -> torch.Tensor: ...  # (n, d) L2-normalised


def render_set(
    n: int, seed: int | Sequence[int], holdout_only: bool = False, size: int = 128
) -> tuple[list[ShapeAttrs], list[Image.Image]]:
    """Render ``n`` images with uniformly drawn attributes (seen pairs, or only HOLDOUT pairs)."""
    rng = np.random.default_rng(seed)
    attrs = [sample_attrs(rng, holdout_only=holdout_only) for _ in range(n)]
    images = [render(a, rng, size)[0] for a in attrs]
    return attrs, images


@torch.no_grad()
def encode_pil(model: EncoderLike, images: Sequence[Image.Image], batch_size: int = 128) -> torch.Tensor:
    """Embed PIL images in batches: (n, d) float32, L2-normalised."""
    chunks = []
    for start in range(0, len(images), batch_size):
        pixels = torch.stack([model.preprocess(im) for im in images[start : start + batch_size]])
        chunks.append(model.encode_images(pixels).float())
    return torch.cat(chunks)


@torch.no_grad()
def _class_embeddings(model: EncoderLike, attribute: str) -> torch.Tensor:
    """One embedding per value of ``attribute``: the normalised mean of its prompts' embeddings (ensembling)."""
    prompts = attribute_prompts(attribute)
    rows = []
    for value in VALUES[attribute]:
        mean = model.encode_texts(list(prompts[value])).float().mean(dim=0)
        rows.append(mean / mean.norm())
    return torch.stack(rows)  # (n_values, d)


def full_caption_candidates() -> tuple[list[tuple[str, ...]], list[str]]:
    """All combinations of the FULL_CAPTION attributes (seen and held-out) and their canonical captions."""
    combos = list(itertools.product(SIZES, COLOURS, SHAPES, POSITIONS))
    order = {"size": 0, "colour": 1, "shape": 2, "position": 3}
    assert tuple(order) == FULL_CAPTION
    texts = [
        caption(ShapeAttrs(shape=sh, colour=co, size=si, position=po, background="dark"), FULL_CAPTION)
        for si, co, sh, po in combos
    ]
    return combos, texts


def _scores(
    image_emb: torch.Tensor,
    attrs: Sequence[ShapeAttrs],
    class_emb: dict[str, torch.Tensor],
    caption_emb: torch.Tensor,
) -> dict[str, float]:
    """Per-attribute zero-shot accuracy and full-caption top-1 for one image set."""
    result: dict[str, float] = {}
    for attribute in ATTRIBUTES:
        truth = torch.tensor([VALUES[attribute].index(getattr(a, attribute)) for a in attrs])
        pred = (image_emb @ class_emb[attribute].T).argmax(dim=1)
        result[attribute] = float((pred == truth).float().mean())
    combos, _ = full_caption_candidates()
    index = {combo: i for i, combo in enumerate(combos)}
    truth = torch.tensor([index[(a.size, a.colour, a.shape, a.position)] for a in attrs])
    pred = (image_emb @ caption_emb.T).argmax(dim=1)
    result["full_caption"] = float((pred == truth).float().mean())
    return result


@torch.no_grad()
def evaluate_model(
    model: EncoderLike, n: int, seed: int, batch_size: int = 128, heldout_n: int | None = None
) -> dict:
    """Zero-shot accuracy per attribute and full-caption top-1 on fresh seen and held-out image sets.

    Zero-shot: for each attribute, the predicted value is the one whose prompt ensemble (the mean of the
    normalised embeddings of ``attribute_prompts(attribute)[value]``) is most similar to the image.
    Full caption: top-1 of the true "a {size} {colour} {shape} {position}" caption among ALL
    2 x 6 x 5 x 5 = 300 combinations (held-out pairs included as candidates).

    Args:
        model: an encoder with ``preprocess``, ``encode_images``, ``encode_texts`` (normalised outputs).
        n: number of images with seen (shape, colour) pairs (>= 1).
        seed: the seed; the seen set uses ``[seed, 0]`` and the held-out set ``[seed, 1]``.
        batch_size: images per forward pass. Default 128.
        heldout_n: number of images with HOLDOUT pairs. Default ``n``.

    Returns:
        ``{"seen": {"n", "zero_shot": {attr: acc}, "full_caption_top1"}, "heldout": {...},
        "chance": {...}, "n_candidates": 300, "seed": seed, "seconds": ...}``.

    Examples::

        metrics = evaluate_model(load_model("bundled:shapes"), n=2000, seed=7)
        metrics["seen"]["zero_shot"]["position"], metrics["heldout"]["full_caption_top1"]
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    heldout_n = n if heldout_n is None else heldout_n
    start = time.perf_counter()
    class_emb = {attribute: _class_embeddings(model, attribute) for attribute in ATTRIBUTES}
    _, texts = full_caption_candidates()
    caption_emb = torch.cat(
        [model.encode_texts(texts[i : i + 100]).float() for i in range(0, len(texts), 100)]
    )

    report: dict = {"seed": seed, "n_candidates": len(texts), "holdout_pairs": [list(p) for p in HOLDOUT]}
    for split, count, holdout_only in (("seen", n, False), ("heldout", heldout_n, True)):
        if count < 1:
            continue
        attrs, images = render_set(count, [seed, int(holdout_only)], holdout_only=holdout_only)
        image_emb = encode_pil(model, images, batch_size)
        scores = _scores(image_emb, attrs, class_emb, caption_emb)
        report[split] = {
            "n": count,
            "zero_shot": {a: round(scores[a], 4) for a in ATTRIBUTES},
            "full_caption_top1": round(scores["full_caption"], 4),
        }
        LOG.info("evaluated %d %s images", count, split)
    report["chance"] = {a: round(1 / len(VALUES[a]), 4) for a in ATTRIBUTES} | {
        "full_caption_top1": round(1 / len(texts), 4)
    }
    report["seconds"] = round(time.perf_counter() - start, 2)
    return report
