"""evaluate_model against oracle encoders whose accuracies are known exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import counterclip.shapes.evaluate as evaluate_module
from counterclip.shapes import (
    ATTRIBUTES,
    VALUES,
    ShapeAttrs,
    evaluate_model,
    full_caption_candidates,
    parse_caption,
)

# One embedding dimension per (attribute, value): 2 + 6 + 5 + 5 + 3 = 21.
_SLOTS = {(a, v): i for i, (a, v) in enumerate((a, v) for a in ATTRIBUTES for v in VALUES[a])}


def _one_hot(values: dict[str, str]) -> torch.Tensor:
    vec = torch.zeros(len(_SLOTS))
    for attribute, value in values.items():
        vec[_SLOTS[attribute, value]] = 1.0
    return vec / vec.norm()


class OracleEncoder:
    """Reads the true attributes the (patched) renderer attached to the image; texts via parse_caption.

    ``swap_position`` makes the image side report left<->right and top<->bottom, so position zero-shot and
    full-caption accuracy must drop to exactly the share of "center" images.
    """

    logit_scale = 100.0

    def __init__(self, swap_position: bool = False) -> None:
        self.swap_position = swap_position

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        attrs: ShapeAttrs = image.info["attrs"]
        if self.swap_position:
            swap = {"left": "right", "right": "left", "top": "bottom", "bottom": "top", "center": "center"}
            attrs = attrs.replace(position=swap[attrs.position])
        return _one_hot(attrs.as_dict()).reshape(1, 1, -1)  # stands in for (3, H, W) pixels

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.reshape(len(pixels), -1)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        return torch.stack([_one_hot(parse_caption(t)) for t in texts])


@pytest.fixture()
def labelled_render(monkeypatch: pytest.MonkeyPatch) -> list[ShapeAttrs]:
    """Patch evaluate's renderer to attach each image's attributes; returns the list of rendered attrs."""
    rendered: list[ShapeAttrs] = []
    real_render = evaluate_module.render

    def render(attrs: ShapeAttrs, rng: np.random.Generator, size: int = 128):
        image, bbox = real_render(attrs, rng, size)
        image.info["attrs"] = attrs
        rendered.append(attrs)
        return image, bbox

    monkeypatch.setattr(evaluate_module, "render", render)
    return rendered


def test_full_caption_candidates_cover_all_combinations() -> None:
    combos, texts = full_caption_candidates()
    assert len(combos) == len(set(texts)) == 2 * 6 * 5 * 5
    assert "a large red circle on the left" in texts
    assert "a small blue circle in the center" in texts  # held-out pairs are candidates too


def test_oracle_scores_perfectly(labelled_render: list[ShapeAttrs]) -> None:
    metrics = evaluate_model(OracleEncoder(), n=40, seed=3, heldout_n=20, batch_size=16)
    assert metrics["seen"]["n"] == 40 and metrics["heldout"]["n"] == 20
    for split in ("seen", "heldout"):
        assert metrics[split]["zero_shot"] == dict.fromkeys(ATTRIBUTES, 1.0)
        assert metrics[split]["full_caption_top1"] == 1.0
    assert metrics["n_candidates"] == 300
    assert metrics["chance"]["colour"] == round(1 / 6, 4)
    seen, held = labelled_render[:40], labelled_render[40:]
    assert not any(a.is_holdout for a in seen) and all(a.is_holdout for a in held)


def test_wrong_position_is_counted_wrong(labelled_render: list[ShapeAttrs]) -> None:
    metrics = evaluate_model(OracleEncoder(swap_position=True), n=50, seed=4, heldout_n=0)
    centre_share = sum(a.position == "center" for a in labelled_render) / len(labelled_render)
    assert 0 < centre_share < 1
    assert metrics["seen"]["zero_shot"]["position"] == pytest.approx(centre_share, abs=1e-4)
    assert metrics["seen"]["full_caption_top1"] == pytest.approx(centre_share, abs=1e-4)
    assert metrics["seen"]["zero_shot"]["colour"] == 1.0
    assert "heldout" not in metrics


def test_evaluation_is_deterministic(labelled_render: list[ShapeAttrs]) -> None:
    evaluate_model(OracleEncoder(), n=10, seed=9, heldout_n=5)
    first = list(labelled_render)
    labelled_render.clear()
    evaluate_model(OracleEncoder(), n=10, seed=9, heldout_n=5)
    assert labelled_render == first
