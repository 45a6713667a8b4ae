"""LIME (the `lime` package) for images (superpixels) and text (word masking), model calls batched.

The black box is the target score of the pair: for image maps each perturbed image is scored against the
fixed text embedding(s); for text maps each masked caption is scored against the fixed image embedding.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from counterclip.errors import InputError
from counterclip.explainers._core.common import (
    Cost,
    PreparedInputs,
    image_embedding,
    image_grid,
    model_guard,
    pool_to_grid,
    text_embedding,
    upsample,
)
from counterclip.explainers._core.registry import Method, by_modality
from counterclip.explainers._core.targets import Target
from counterclip.explainers.base import Explanation
from counterclip.models.base import ClipModel


def grid_segments(height: int, width: int, grid: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` int labels of a regular ``grid`` of cells (row-major ids), e.g. the ViT patch grid."""
    rows = np.minimum((np.arange(height) * grid[0]) // height, grid[0] - 1)
    cols = np.minimum((np.arange(width) * grid[1]) // width, grid[1] - 1)
    return (rows[:, None] * grid[1] + cols[None, :]).astype(np.int64)


def lime_image_weights(
    image: np.ndarray,
    score_fn: Callable[[np.ndarray], np.ndarray],
    segments: np.ndarray,
    num_samples: int = 300,
    batch_size: int = 64,
    hide_color: np.ndarray | float | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """LIME weights per superpixel for any black box over uint8 images.

    Args:
        image: ``(H, W, 3)`` uint8 image.
        score_fn: ``(n, H, W, 3)`` images -> ``(n,)`` scores.
        segments: ``(H, W)`` int superpixel labels ``0..k-1``.
        num_samples: perturbed samples. Default 300.
        batch_size: images per black-box call. Default 64.
        hide_color: colour of a hidden superpixel; None = the image's mean colour.
        seed: random seed of the sampler.

    Returns:
        ``(weights (k,), local_prediction_r2)``: the linear model's weight per superpixel and its R^2.
    """
    from lime import lime_image

    if hide_color is None:
        hide_color = image.reshape(-1, 3).mean(axis=0)
    explainer = lime_image.LimeImageExplainer(feature_selection="none", random_state=seed)

    def classifier(batch: np.ndarray) -> np.ndarray:
        return np.asarray(score_fn(np.asarray(batch)), dtype=np.float64).reshape(-1, 1)

    explanation = explainer.explain_instance(
        image,
        classifier,
        labels=(0,),
        top_labels=None,
        hide_color=hide_color,
        num_features=int(segments.max()) + 1,
        num_samples=num_samples,
        batch_size=batch_size,
        segmentation_fn=lambda _: segments,
        random_seed=seed,
        **_quiet(explainer.explain_instance),
    )
    weights = np.zeros(int(segments.max()) + 1)
    for segment, weight in explanation.local_exp[0]:
        weights[segment] = weight
    return weights, float(explanation.score)


def image_lime(
    model: ClipModel,
    inputs: PreparedInputs,
    target: Target,
    num_samples: int = 300,
    batch_size: int = 64,
    segmentation: str = "grid",
    seed: int = 0,
) -> Explanation:
    """LIME map of the image: one weight per superpixel, painted over its pixels.

    Args:
        model: a CLIP model.
        inputs: from `prepare`.
        target: the score explained.
        num_samples: perturbed images. Default 300.
        batch_size: images per forward pass. Default 64.
        segmentation: ``grid`` (the patch grid; default) or ``slic`` (scikit-image superpixels).
        seed: sampler seed.

    Returns:
        `Explanation` with ``pixel_map (H, W)``, ``patch_map`` pooled on the patch grid, and
        ``extras['r2']`` (fit of LIME's linear model), ``extras['segments']`` (count).
    """
    cost = Cost()
    h, w = inputs.codec.size
    image = (inputs.pixels[0].permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
    if segmentation == "grid":
        segments = grid_segments(h, w, image_grid(model))
    elif segmentation == "slic":
        from skimage.segmentation import slic

        segments = slic(image, n_segments=int(np.prod(image_grid(model))), compactness=10, start_label=0)
    else:
        raise InputError(f"segmentation must be grid or slic, got {segmentation!r}")
    with model_guard(model), torch.no_grad():
        text_emb = text_embedding(model, inputs.tokens)
        score = float(target(image_embedding(model, inputs.codec, inputs.pixels), text_emb)[0])

        def score_fn(batch: np.ndarray) -> np.ndarray:
            cost.forward += 1
            pixels = torch.from_numpy(batch.astype(np.float32) / 255.0).permute(0, 3, 1, 2).to(model.device)
            return target(image_embedding(model, inputs.codec, pixels), text_emb).cpu().numpy()

        weights, r2 = lime_image_weights(image, score_fn, segments, num_samples, batch_size, seed=seed)
    model_map = weights[segments]
    return Explanation(
        method="lime",
        modality="image",
        score=score,
        pixel_map=_resize_nearest(model_map, (inputs.image.height, inputs.image.width)),
        patch_map=pool_to_grid(model_map, image_grid(model)),
        explains=target.describe(inputs.texts),
        forward_passes=cost.forward + 1,
        seconds=cost.seconds,
        extras={"r2": r2, "segments": int(segments.max()) + 1, "num_samples": num_samples},
    )


def _resize_nearest(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if values.shape == size:
        return values.astype(np.float64)
    return upsample(values, size, mode="nearest")


def text_lime(
    model: ClipModel,
    inputs: PreparedInputs,
    target: Target,
    num_samples: int = 300,
    batch_size: int = 128,
    seed: int = 0,
) -> Explanation:
    """LIME map of the caption: one weight per word (words masked out of the caption).

    Args:
        model: a CLIP model.
        inputs: from `prepare` with one text.
        target: the score explained.
        num_samples: masked captions. Default 300.
        batch_size: captions per forward pass. Default 128.
        seed: sampler seed.

    Returns:
        `Explanation` with ``tokens`` (the words) and ``token_map (T,)``, ``extras['r2']``.
    """
    from lime import lime_text

    if len(inputs.texts) != 1:
        raise InputError("text maps explain one caption: pass a single text (no label set)")
    cost = Cost()
    with model_guard(model), torch.no_grad():
        image_emb = image_embedding(model, inputs.codec, inputs.pixels)
        score = float(target(image_emb, text_embedding(model, inputs.tokens))[0])

        def classifier(texts: list[str]) -> np.ndarray:
            scores = []
            for start in range(0, len(texts), batch_size):
                cost.forward += 1
                chunk = [t if t.strip() else "." for t in texts[start : start + batch_size]]
                tokens = model.tokenize(chunk).to(model.device)
                scores.append(target(image_emb, text_embedding(model, tokens)).cpu().numpy())
            return np.concatenate(scores).astype(np.float64).reshape(-1, 1)

        explainer = lime_text.LimeTextExplainer(bow=False, feature_selection="none", random_state=seed)
        explanation = explainer.explain_instance(
            inputs.texts[0], classifier, labels=(0,), num_features=1000, num_samples=num_samples
        )
    indexed = explanation.domain_mapper.indexed_string
    words = [str(indexed.word(i)) for i in range(indexed.num_words())]
    values = np.zeros(len(words))
    for index, weight in explanation.local_exp[0]:
        values[index] = weight
    return Explanation(
        method="lime",
        modality="text",
        score=score,
        tokens=words,
        token_map=values,
        explains=target.describe(inputs.texts),
        forward_passes=cost.forward + 2,
        seconds=cost.seconds,
        extras={"r2": float(explanation.score), "num_samples": num_samples},
    )


@dataclass(frozen=True)
class LimeOptions:
    """Options of the ``lime`` method."""

    num_samples: int = 300  # perturbed images or captions
    batch_size: int | None = None  # inputs per forward pass; None: 64 images, 128 captions
    segmentation: str = "grid"  # image superpixels: grid (the patch grid) or slic
    seed: int = 0  # sampler seed


def _run(
    model: ClipModel, inputs: PreparedInputs, target: Target, modality: str, options: LimeOptions
) -> Explanation:
    def image_map() -> Explanation:
        return image_lime(
            model,
            inputs,
            target,
            num_samples=options.num_samples,
            batch_size=options.batch_size or 64,
            segmentation=options.segmentation,
            seed=options.seed,
        )

    def text_map() -> Explanation:
        return text_lime(
            model,
            inputs,
            target,
            num_samples=options.num_samples,
            batch_size=options.batch_size or 128,
            seed=options.seed,
        )

    return by_modality(modality, image_map, text_map)


METHOD = Method(
    name="lime",
    description="LIME (the lime package): superpixels of the image, words of the caption",
    modalities=("image", "text", "both"),
    options=LimeOptions,
    run=_run,
    evaluation_options={"num_samples": 300},
    cheap_options={"num_samples": 16},
)


def _quiet(explain_instance: Any) -> dict[str, Any]:
    """``progress_bar=False`` where LIME takes it (its releases after 0.2.0.1): the caller shows progress
    (the CLI's spinner, the evaluation's bar). LIME 0.2.0.1, the current release, always draws its own."""
    return {"progress_bar": False} if "progress_bar" in inspect.signature(explain_instance).parameters else {}
