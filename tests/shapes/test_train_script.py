"""The training recipe's pieces: batches (hard negatives, no held-out pairs, consistency), losses, init."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from counterclip.shapes import ATTRIBUTES, parse_caption

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_shapes_clip.py"


@pytest.fixture(scope="module")
def train():
    """The training script, imported as a module (it only trains under ``__main__``)."""
    spec = importlib.util.spec_from_file_location("train_shapes_clip", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _identity_preprocess(image):
    return torch.from_numpy(np.array(image.resize((8, 8)))).permute(2, 0, 1).float()


def test_groups_differ_in_exactly_one_attribute_and_skip_holdout(train) -> None:
    rng = np.random.default_rng(0)
    for _ in range(100):
        base, *variants = train.sample_group(rng, 4)
        assert not base.is_holdout
        for variant in variants:
            assert not variant.is_holdout
            assert sum(getattr(base, a) != getattr(variant, a) for a in ATTRIBUTES) == 1


def test_batch_consistency_matrix_matches_caption_meaning(train) -> None:
    cfg = train.parse_args(["--batch-size", "24"])
    batch = train.make_batch(np.random.default_rng(1), cfg, _identity_preprocess)
    assert batch.pixels.shape == (24, 3, 8, 8)
    assert len(set(batch.texts)) == len(batch.texts)  # captions are deduplicated
    for i in range(24):
        values = dict(zip(ATTRIBUTES, batch.labels[i].tolist(), strict=True))
        for j, text in enumerate(batch.texts):
            named = parse_caption(text)
            expected = all(train.VALUES[a].index(v) == values[a] for a, v in named.items())
            assert bool(batch.consistent[i, j]) == expected, (i, text)
    assert batch.consistent.any(dim=0).all() and batch.consistent.any(dim=1).all()


def test_multi_positive_loss_reaches_target_entropy(train) -> None:
    # Two images, three captions; caption 2 is true of both images. With all logits equal, softmax is
    # uniform: each image->text row costs log 3 and each text->image column log 2, whatever the targets.
    consistent = torch.tensor([[True, False, True], [False, True, True]])
    image = torch.eye(3)[:2]
    text = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [1.0, 1.0, 0]]), dim=1)
    logits_free = train.multi_positive_loss(image, text, consistent, torch.tensor(1e-6))
    assert logits_free.item() == pytest.approx((math.log(3) + math.log(2)) / 2, abs=1e-4)
    # A large scale separates caption 0 (1.0) from caption 2 (0.707) for image 0, so the loss rises above
    # the entropy bound instead of reaching 0: the targets ask for equal mass on both.
    assert train.multi_positive_loss(image, text, consistent, torch.tensor(100.0)).item() > math.log(2) / 2


def test_attribute_loss_is_low_for_matching_prompts(train) -> None:
    prompts = train.attribute_prompt_texts(0)
    assert len(prompts) == sum(len(train.VALUES[a]) for a in ATTRIBUTES)
    labels = torch.tensor([[0, 1, 1, 2, 0]])
    # One-hot "text" per prompt, and an image that matches exactly its labelled prompts.
    prompt_emb = torch.eye(len(prompts))
    offsets = np.cumsum([0] + [len(train.VALUES[a]) for a in ATTRIBUTES])[:-1]
    image = torch.zeros(1, len(prompts))
    image[0, [o + v for o, v in zip(offsets, labels[0].tolist(), strict=True)]] = 1 / math.sqrt(5)
    good = train.attribute_loss(image, prompt_emb, labels, torch.tensor(50.0))
    bad = train.attribute_loss(image, prompt_emb, (labels + 1) % 2, torch.tensor(50.0))
    assert good.item() < 1e-3 < bad.item()


def test_sincos_positions_are_distinct_and_bounded(train) -> None:
    codes = train.sincos_positional_embedding(8, 128)
    assert codes.shape == (64, 128) and codes.abs().max() <= 1.0
    distances = torch.cdist(codes, codes) + torch.eye(64) * 1e3
    assert distances.min() > 0.5  # every patch position gets its own code


def test_free_colours_are_no_named_colour_and_keep_holdout_unseen(train) -> None:
    rng = np.random.default_rng(0)
    for shape in ("circle", "triangle", "star", "square"):
        for _ in range(200):
            rgb = train.free_colour(rng, shape)
            distances = {
                n: sum(abs(a - b) for a, b in zip(rgb, c, strict=True)) for n, c in train.RGB.items()
            }
            nearest = min(distances, key=distances.__getitem__)
            assert distances[nearest] >= train.FREE_COLOUR_MIN_DISTANCE
            assert (shape, nearest) not in train.HOLDOUT


def test_free_colour_images_never_get_colour_captions(train) -> None:
    cfg = train.parse_args(["--batch-size", "32", "--p-free-colour", "0.5"])
    batch = train.make_batch(np.random.default_rng(2), cfg, _identity_preprocess)
    free = batch.labels[:, ATTRIBUTES.index("colour")] == -2
    assert 0 < int(free.sum()) < 32
    for j, text in enumerate(batch.texts):
        if "colour" in parse_caption(text):
            assert not batch.consistent[free, j].any(), text
