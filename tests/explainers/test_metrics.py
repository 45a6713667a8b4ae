"""Quality metrics against hand-computed values, and the eval run on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from counterclip.evaluation.explainers import evaluate_explainers
from counterclip.explainers.metrics import (
    auc,
    cell_masks,
    perturbation_curve,
    pointing_hit,
    pointing_hit_cells,
    relative_change,
)


def test_pointing_hit() -> None:
    values = np.zeros((10, 10))
    values[3, 7] = 1.0  # y = 3, x = 7
    assert pointing_hit(values, (7, 3, 8, 4))
    assert not pointing_hit(values, (0, 0, 7, 10))  # x1 is exclusive
    assert not pointing_hit(np.ones((4, 4)), (0, 0, 4, 4))  # a constant map points nowhere


def test_auc_and_relative_change() -> None:
    assert auc(np.array([1.0, 0.0])) == 0.5
    assert auc(np.array([1.0, 1.0, 0.0])) == 0.75
    assert relative_change(np.array([3.0, 4.0]), np.array([3.0, 4.0])) == 0.0
    assert relative_change(np.array([3.0, 4.0]), np.array([0.0, 0.0])) == 1.0


def test_cell_masks_tile_the_image() -> None:
    masks = cell_masks((6, 9), (2, 3))
    assert masks.shape == (6, 6, 9)
    assert torch.equal(masks.sum(dim=0), torch.ones(6, 9, dtype=torch.long))
    assert masks[4, 3:6, 3:6].all()  # cell 4 = row 1, column 1


def test_deletion_and_insertion_curves_of_a_one_cell_score() -> None:
    pixels = torch.ones(1, 3, 4, 4)
    fill = torch.zeros(1, 3, 4, 4)

    def score_fn(batch: torch.Tensor) -> torch.Tensor:  # mean of cell 3 (bottom right of a 2x2 grid)
        return batch[:, :, 2:, 2:].mean(dim=(1, 2, 3))

    first = np.array([3, 0, 1, 2])
    last = np.array([0, 1, 2, 3])
    np.testing.assert_allclose(
        perturbation_curve(score_fn, pixels, first, (2, 2), "deletion", fill, points=4), [1, 0, 0, 0, 0]
    )
    np.testing.assert_allclose(
        perturbation_curve(score_fn, pixels, last, (2, 2), "deletion", fill, points=4), [1, 1, 1, 1, 0]
    )
    np.testing.assert_allclose(
        perturbation_curve(score_fn, pixels, first, (2, 2), "insertion", fill, points=4), [0, 1, 1, 1, 1]
    )
    # Fewer points than cells: curves are sampled at evenly spaced counts (0, 2, 4 cells changed).
    np.testing.assert_allclose(
        perturbation_curve(score_fn, pixels, first, (2, 2), "deletion", fill, points=2), [1, 0, 0]
    )


def test_eval_explainers_on_a_tiny_model(tiny_vit) -> None:
    report = evaluate_explainers(
        tiny_vit, n=2, seed=0, methods=("relevance", "gradcam"), sensitivity_images=1, random_orders=1
    )
    assert set(report["methods"]) == {"relevance", "gradcam"}
    for figures in report["methods"].values():
        assert figures["pointing_game"] in (0.0, 0.5, 1.0)
        assert 0.0 <= figures["deletion_auc"] <= 1.0 and 0.0 <= figures["insertion_auc_random"] <= 1.0
        assert figures["cost_forward_multiple"] > 0 and figures["sensitivity_images"] == 1
        assert figures["forward_passes"] == 1.0 and figures["backward_passes"] == 1.0
    text = report["text_test"]["relevance"]
    assert text["cases"] + text["skipped"] == 2 and text["chance"] == 0.25
    assert "gradcam" not in report["text_test"]  # image-only method


def test_eval_rejects_unknown_methods(tiny_vit) -> None:
    from counterclip.errors import InputError

    with pytest.raises(InputError, match="unknown method"):
        evaluate_explainers(tiny_vit, n=1, methods=("nope",))


def test_pointing_hit_cells() -> None:
    cells = np.zeros((4, 4))
    cells[1, 2] = 1.0  # covers x in [16, 24), y in [8, 16) of a 32 x 32 image
    assert pointing_hit_cells(cells, (23, 15, 30, 30), (32, 32))  # touches the cell's corner pixel
    assert not pointing_hit_cells(cells, (24, 0, 32, 32), (32, 32))  # starts just right of it
    assert not pointing_hit_cells(np.ones((4, 4)), (0, 0, 32, 32), (32, 32))
