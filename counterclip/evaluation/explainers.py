"""`counterclip eval explainers`: explainer quality measured on shapes-world images with known boxes.

For every method: pointing game (the map's top cell on the patch grid overlaps the object's box; the
strict variant asks the upsampled map's top pixel to lie inside the box), deletion and insertion AUC of the
explained score beside a random cell order, max-sensitivity under small pixel noise, and cost per
explanation (median over images of the CPU time of one explanation divided by the CPU time of one
no-grad forward pass of the same image and label set, plus pass counts and wall seconds). The explained score
is the probability of the true ``"a {colour} {shape}"`` caption among all colour-shape captions, so curves
live in [0, 1] and AUC ratios are meaningful.

Text test: for a full caption with one wrong colour ("a large blue circle on the left" for a red circle)
the share of images where the wrong word gets the lowest relevance among the content words (size,
colour, shape, position), beside the same share for the correct caption (a control: how often the colour
word is lowest anyway).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from counterclip.errors import InputError
from counterclip.explainers import REGISTRY, LabelProbability, PairSimilarity, explain
from counterclip.explainers._core.common import PixelCodec, image_grid, model_guard, pool_to_grid
from counterclip.explainers.metrics import (
    auc,
    perturbation_curve,
    pointing_hit,
    pointing_hit_cells,
    relative_change,
)
from counterclip.models.base import ClipModel
from counterclip.shapes import COLOURS, FULL_CAPTION, SHAPES, ShapeAttrs, caption, render, sample_attrs

LOG = logging.getLogger(__name__)


def default_methods() -> tuple[str, ...]:
    """The registered attribution methods (maps of evidence, not of a change), in registration order."""
    return tuple(method.name for method in REGISTRY if method.attribution)


def _colour_shape_labels() -> list[str]:
    return [f"a {colour} {shape}" for shape in SHAPES for colour in COLOURS]


def forward_seconds(model: ClipModel, image: Image.Image, texts: Sequence[str], repeats: int = 10) -> float:
    """Median seconds of one forward pass of the image and ``texts`` (no gradient), after one warm-up."""
    codec = PixelCodec.of(model)
    pixels = codec.to_model(codec.pil_to_pixels(image).to(model.device))
    tokens = model.tokenize(list(texts)).to(model.device)
    times = []
    with torch.no_grad():
        model.image_features(pixels), model.text_features(tokens)
        for _ in range(repeats):
            started = time.perf_counter()
            model.image_features(pixels), model.text_features(tokens)
            times.append(time.perf_counter() - started)
    return float(np.median(times))


def _forward_cpu_seconds(
    model: ClipModel, codec: PixelCodec, image: Image.Image, tokens: torch.Tensor
) -> float:
    """CPU seconds of one no-grad forward pass of ``image`` and ``tokens`` (minimum of 3 runs)."""
    pixels = codec.to_model(codec.pil_to_pixels(image).to(model.device))
    times = []
    with torch.no_grad():
        for _ in range(3):
            started = time.process_time()
            model.image_features(pixels), model.text_features(tokens)
            times.append(time.process_time() - started)
    return min(times)


def _content_positions(tokens: list[str], words: Sequence[str]) -> list[int] | None:
    """Index of each word in ``tokens`` (first match, case-insensitive), or None if one is missing."""
    lowered = [t.lower().strip() for t in tokens]
    positions = []
    for word in words:
        if word not in lowered:
            return None
        positions.append(lowered.index(word))
    return positions


def evaluate_explainers(
    model: ClipModel,
    n: int = 50,
    seed: int = 0,
    methods: Sequence[str] | None = None,
    sensitivity_images: int = 10,
    sensitivity_radius: float = 0.02,
    random_orders: int = 3,
    image_size: int = 128,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Measure explainer quality on ``n`` freshly rendered shapes images.

    Args:
        model: the CLIP model explained.
        n: number of images (>= 1). Default 50.
        seed: random seed (images, random orders, noise).
        methods: registered method names to measure; None: `default_methods` (each method runs with its
            ``evaluation_options``).
        sensitivity_images: images used for max-sensitivity (it costs 3 extra explanations each). Default 10.
        sensitivity_radius: max absolute pixel noise in [0, 1] units. Default 0.02 (about 5/255).
        random_orders: random cell orders averaged for the baselines. Default 3.
        image_size: rendered image side. Default 128.
        progress: called with ``(done, total)`` after each image of each method (and of the text test).

    Returns:
        JSON-friendly dict: settings, ``forward_seconds``, per-method figures under ``methods``, and
        ``text_test`` per text-capable method.
    """
    methods = _checked_methods(methods, n)
    rng = np.random.default_rng(seed)
    world = _shapes_world(model, rng, n, image_size)
    seconds_per_forward = forward_seconds(
        model, world.samples[0][1], world.labels
    )  # what every explanation sees
    text_methods = [m for m in methods if "text" in REGISTRY.get(m).modalities]
    steps = {"done": 0, "total": n * (len(methods) + len(text_methods))}

    def step() -> None:
        steps["done"] += 1
        if progress is not None:
            progress(steps["done"], steps["total"])

    accuracy = _zero_shot_accuracy(model, world)
    noise = _Noise(sensitivity_images, sensitivity_radius, random_orders)
    results = {method: _evaluate_method(model, method, world, rng, noise, step) for method in methods}
    text_results = {method: _text_test(model, world.samples, method, step) for method in text_methods}
    return {
        "model": str(model.spec),
        "n": n,
        "seed": seed,
        "image_size": image_size,
        "grid": list(world.grid),
        "target": "probability of the true 'a {colour} {shape}' caption among 30 colour-shape captions",
        "zero_shot_accuracy": accuracy,
        "forward_seconds": seconds_per_forward,
        "cost_reference": "median CPU-time ratio to one no-grad forward pass of the image and the 30 labels",
        "methods": results,
        "text_test": text_results,
    }


def _checked_methods(methods: Sequence[str] | None, n: int) -> tuple[str, ...]:
    """The methods to measure (`default_methods` when None); unknown methods and ``n < 1`` are refused."""
    methods = default_methods() if methods is None else tuple(methods)
    unknown = [m for m in methods if m not in REGISTRY.names()]
    if unknown or not methods:
        raise InputError(f"unknown method(s) {unknown}; choose from {', '.join(REGISTRY.names())}")
    if n < 1:
        raise InputError(f"--n must be at least 1, got {n}")
    return methods


@dataclass(frozen=True)
class _ShapesWorld:
    """What every method is measured on: rendered images with their attributes and boxes, and the 30
    colour-shape captions whose probabilities are explained."""

    samples: list[tuple[ShapeAttrs, Image.Image, Any]]  # (attributes, image, object box)
    labels: list[str]  # "a {colour} {shape}" for every colour and shape
    label_tokens: torch.Tensor  # (30, context) the labels tokenized
    label_emb: torch.Tensor  # (30, d) their text embeddings
    codec: PixelCodec  # the model's pixel codec
    grid: tuple[int, int]  # the map grid the pointing game and the perturbations use


@dataclass(frozen=True)
class _Noise:
    """How hard a map is pushed: random cell orders for the baselines, pixel noise for sensitivity."""

    sensitivity_images: int  # images measured for max-sensitivity (3 extra explanations each)
    sensitivity_radius: float  # max absolute pixel noise in [0, 1] units
    random_orders: int  # random cell orders averaged for the deletion / insertion baselines


def _shapes_world(model: ClipModel, rng: np.random.Generator, n: int, image_size: int) -> _ShapesWorld:
    """``n`` freshly rendered shapes images (from ``rng``) and the labels embedded by ``model``."""
    labels = _colour_shape_labels()
    samples = []
    for _ in range(n):
        attrs = sample_attrs(rng)
        image, bbox = render(attrs, rng, image_size)
        samples.append((attrs, image, bbox))
    label_tokens = model.tokenize(labels).to(model.device)
    with torch.no_grad():
        label_emb = model.text_features(label_tokens)
    return _ShapesWorld(samples, labels, label_tokens, label_emb, PixelCodec.of(model), image_grid(model))


def _zero_shot_accuracy(model: ClipModel, world: _ShapesWorld) -> float:
    """Share of the images whose true caption has the highest logit among the labels."""
    codec, pair_score = world.codec, model.pair_score
    with model_guard(model), torch.no_grad():
        return float(
            np.mean(
                [
                    int(
                        torch.argmax(
                            pair_score.label_logits(
                                model.image_features(
                                    codec.to_model(codec.pil_to_pixels(im).to(model.device))
                                ),
                                world.label_emb,
                            )
                        )
                    )
                    == world.labels.index(f"a {a.colour} {a.shape}")
                    for a, im, _ in world.samples
                ]
            )
        )


def _label_probability(
    model: ClipModel, world: _ShapesWorld, index: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Pixels ``(k, 3, h, w)`` -> the probability of label ``index`` for each, in batches of 64."""
    target = LabelProbability(index, model.pair_score)

    def score(pixels: torch.Tensor) -> torch.Tensor:
        out = []
        for start in range(0, len(pixels), 64):
            out.append(
                target(
                    model.image_features(world.codec.to_model(pixels[start : start + 64])), world.label_emb
                )
            )
        return torch.cat(out)

    return score


@dataclass
class _MethodFigures:
    """One method's figures, image by image (`summary` averages them)."""

    hits: list[float] = field(default_factory=list)
    strict_hits: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    forwards: list[float] = field(default_factory=list)
    backwards: list[float] = field(default_factory=list)
    cost_ratios: list[float] = field(default_factory=list)
    deletion: list[float] = field(default_factory=list)
    deletion_random: list[float] = field(default_factory=list)
    insertion: list[float] = field(default_factory=list)
    insertion_random: list[float] = field(default_factory=list)
    sensitivity: list[float] = field(default_factory=list)
    extra: dict[str, list[float]] = field(default_factory=dict)  # the method's own figures

    def summary(self) -> dict[str, Any]:
        """The means (the cost: the median), and the deletion / insertion figures where the method has an
        evidence order."""
        figures: dict[str, Any] = {
            "pointing_game": float(np.mean(self.hits)),
            "pointing_game_strict": float(np.mean(self.strict_hits)),
            "cost_forward_multiple": float(np.median(self.cost_ratios)),
            "seconds_mean": float(np.mean(self.seconds)),
            "forward_passes": float(np.mean(self.forwards)),
            "backward_passes": float(np.mean(self.backwards)),
        }
        if self.deletion:
            figures.update(
                {
                    "deletion_auc": float(np.mean(self.deletion)),
                    "deletion_auc_random": float(np.mean(self.deletion_random)),
                    "deletion_below_random": float(
                        1 - np.mean(self.deletion) / np.mean(self.deletion_random)
                    ),
                    "insertion_auc": float(np.mean(self.insertion)),
                    "insertion_auc_random": float(np.mean(self.insertion_random)),
                    "max_sensitivity": float(np.mean(self.sensitivity)) if self.sensitivity else None,
                    "sensitivity_images": len(self.sensitivity),
                }
            )
        figures.update({k: float(np.mean(v)) for k, v in self.extra.items()})
        return figures


def _evaluate_method(
    model: ClipModel,
    method: str,
    world: _ShapesWorld,
    rng: np.random.Generator,
    noise: _Noise,
    step: Callable[[], None],
) -> dict[str, Any]:
    """One method's figures over every image of ``world`` (random orders and noise drawn from ``rng``)."""
    spec = REGISTRY.get(method)
    options = dict(spec.evaluation_options)
    LOG.info("evaluating %s on %d images", method, len(world.samples))
    figures = _MethodFigures()
    for i, (attrs, image, bbox) in enumerate(world.samples):
        index = world.labels.index(f"a {attrs.colour} {attrs.shape}")
        target = LabelProbability(index, model.pair_score)
        # Cost as CPU time (all threads of this process) relative to a forward pass of the same inputs
        # measured just before: a ratio of CPU times stays meaningful on a machine shared with others.
        reference = _forward_cpu_seconds(model, world.codec, image, world.label_tokens)
        started = time.process_time()
        exp = explain(model, image, world.labels, method=method, target=target, **options)
        step()
        figures.cost_ratios.append((time.process_time() - started) / max(reference, 1e-6))
        figures.hits.append(
            pointing_hit_cells(pool_to_grid(exp.pixel_map, world.grid), bbox, (image.height, image.width))
        )
        figures.strict_hits.append(pointing_hit(exp.pixel_map, bbox))
        figures.seconds.append(exp.seconds)
        figures.forwards.append(exp.forward_passes)
        figures.backwards.append(exp.backward_passes)
        for name, value in (spec.figures(exp) if spec.figures else {}).items():
            figures.extra.setdefault(name, []).append(value)
        if not spec.attribution:  # a map of a change: no evidence order to delete or insert by
            continue
        _add_perturbation_aucs(figures, model, world, image, exp, index, rng, noise.random_orders)
        if i < noise.sensitivity_images:
            again = functools.partial(
                explain, model, text=world.labels, method=method, target=target, **options
            )
            figures.sensitivity.append(
                _max_sensitivity(again, image, exp, world.grid, rng, noise.sensitivity_radius)
            )
    return figures.summary()


def _add_perturbation_aucs(
    figures: _MethodFigures,
    model: ClipModel,
    world: _ShapesWorld,
    image: Image.Image,
    exp: Any,
    index: int,
    rng: np.random.Generator,
    random_orders: int,
) -> None:
    """Deletion and insertion AUC of label ``index``'s probability with the map's cell order, and their
    means over ``random_orders`` random orders (cells filled with the image's mean colour)."""
    cells = pool_to_grid(exp.pixel_map, world.grid).reshape(-1)
    order = np.argsort(-cells, kind="stable")
    pixels = world.codec.pil_to_pixels(image).to(model.device)
    fill = pixels.mean(dim=(2, 3), keepdim=True).expand_as(pixels)
    score_fn = _label_probability(model, world, index)
    grid = world.grid
    with model_guard(model):
        figures.deletion.append(auc(perturbation_curve(score_fn, pixels, order, grid, "deletion", fill)))
        figures.insertion.append(auc(perturbation_curve(score_fn, pixels, order, grid, "insertion", fill)))
        rand_del, rand_ins = [], []
        for _ in range(random_orders):
            random_order = rng.permutation(len(cells))
            rand_del.append(auc(perturbation_curve(score_fn, pixels, random_order, grid, "deletion", fill)))
            rand_ins.append(auc(perturbation_curve(score_fn, pixels, random_order, grid, "insertion", fill)))
    figures.deletion_random.append(float(np.mean(rand_del)))
    figures.insertion_random.append(float(np.mean(rand_ins)))


def _max_sensitivity(
    explain_again: Callable[[Image.Image], Any],
    image: Image.Image,
    exp: Any,
    grid: tuple[int, int],
    rng: np.random.Generator,
    radius: float,
) -> float:
    """The largest relative change of the map over 3 copies of the image with uniform pixel noise of at
    most ``radius`` (on the patch map, else the map pooled to ``grid``)."""
    reference = exp.patch_map if exp.patch_map is not None else pool_to_grid(exp.pixel_map, grid).reshape(-1)
    worst = 0.0
    for _ in range(3):
        array = np.asarray(image, dtype=np.float64) / 255.0
        noisy = np.clip(array + rng.uniform(-radius, radius, array.shape), 0, 1)
        again = explain_again(Image.fromarray((noisy * 255).round().astype(np.uint8)))
        other = again.patch_map if again.patch_map is not None else pool_to_grid(again.pixel_map, grid)
        worst = max(worst, relative_change(reference, other))
    return worst


def _text_test(
    model: ClipModel,
    samples: list[tuple[ShapeAttrs, Image.Image, Any]],
    method: str,
    step: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Share of images where the wrong colour word of a full caption gets the lowest relevance."""
    wrong_hits, control_hits, skipped = [], [], 0
    options = dict(REGISTRY.get(method).evaluation_options)
    for attrs, image, _ in samples:
        wrong_colour = next(
            c for c in COLOURS[COLOURS.index(attrs.colour) + 1 :] + COLOURS if c != attrs.colour
        )
        for wrong, hits in ((True, wrong_hits), (False, control_hits)):
            shown = attrs.replace(colour=wrong_colour) if wrong else attrs
            text = caption(shown, FULL_CAPTION)
            exp = explain(
                model,
                image,
                text,
                method=method,
                target=PairSimilarity(model.pair_score),
                modality="text",
                **options,
            )
            words = [shown.size, shown.colour, shown.shape, shown.position]
            positions = _content_positions(exp.tokens or [], words)
            if positions is None:
                skipped += 1
                continue
            values = np.asarray(exp.token_map)[positions]
            hits.append(int(np.argmin(values)) == 1)
        step()
    return {
        "wrong_word_lowest": float(np.mean(wrong_hits)) if wrong_hits else None,
        "control_colour_lowest": float(np.mean(control_hits)) if control_hits else None,
        "chance": 1 / len(FULL_CAPTION),
        "cases": len(wrong_hits),
        "skipped": skipped,
    }
