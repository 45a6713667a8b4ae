"""The quality card of a map, on the one-patch ViT double whose evidence is known to lie in one patch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from clip_doubles import GRID, patch_image

from counterclip.explainers import explain
from counterclip.explainers.base import Explanation
from counterclip.explainers.quality import MapQualitySettings, PairWith, map_quality

SETTINGS = MapQualitySettings(points=16, random_orders=4)


def _map_of(cells: np.ndarray, method: str = "oracle") -> Explanation:
    """An explanation whose map is ``cells`` (4 x 4) drawn at the 32 px image's size."""
    pixel_map = np.kron(cells, np.ones((8, 8)))
    return Explanation(method=method, modality="image", score=0.0, pixel_map=pixel_map, forward_passes=1)


def _oracle(patch: int) -> np.ndarray:
    cells = np.zeros((GRID, GRID))
    cells.flat[patch] = 1.0
    return cells


def test_the_true_map_is_concentrated_faithful_complete_and_stable(one_patch_model) -> None:
    image = patch_image(6, background="dark")
    card = map_quality(
        one_patch_model, image, "x", settings=SETTINGS, explain_with=lambda im, tg: _map_of(_oracle(6))
    )
    assert card.understandability.value == 1.0 and card.understandability.reference == pytest.approx(0.1)
    assert card.faithfulness.value > 0.8 and card.faithfulness.beats_reference
    assert card.faithfulness.details["deletion_auc"] < card.faithfulness.details["deletion_auc_random"]
    assert card.completeness.value == pytest.approx(1.0, abs=1e-3) and card.completeness.beats_reference
    assert card.stability.value == 1.0 and card.stability.details["max_sensitivity"] == 0.0
    assert card.contrastivity.value is None  # one text and no foil: nothing to contrast with
    # the scored images (3 orders x 17 points x deletion and insertion) and two noisy copies' maps
    assert card.forward_passes == 5 * 17 * 2 + 2


def test_a_map_on_the_wrong_patch_is_far_from_faithful_and_keeps_nothing(one_patch_model) -> None:
    image = patch_image(6, background="dark")
    card = map_quality(
        one_patch_model, image, "x", settings=SETTINGS, explain_with=lambda im, tg: _map_of(_oracle(9))
    )
    # the true patch comes 7th of 16 (ties in cell order): about where a random order puts it
    assert card.faithfulness.value < 0.1 and abs(card.faithfulness.value - card.faithfulness.reference) < 0.15
    assert card.completeness.value == pytest.approx(0.0, abs=1e-3)


def test_a_constant_map_has_no_contrastivity(one_patch_model) -> None:
    image = patch_image(6, background="dark")
    foil = PairWith(torch.tensor([0.0, 0.0, 0.0, 1.0]), one_patch_model.pair_score, "the class token")
    card = map_quality(
        one_patch_model,
        image,
        "x",
        settings=SETTINGS,
        foil=foil,
        explain_with=lambda im, tg: _map_of(np.full((GRID, GRID), 0.3)),
    )
    assert card.contrastivity.value == 0.0
    assert card.understandability.value == pytest.approx(2 / 16)  # a flat map: its top 2 of 16 cells


def test_why_a_and_why_b_that_point_at_different_patches_are_fully_contrastive(one_patch_model) -> None:
    image = patch_image(6, background="dark")
    foil = PairWith(torch.tensor([0.0, 0.0, 0.0, 1.0]), one_patch_model.pair_score, "the class token")

    def explainer(im, target):
        return _map_of(_oracle(2 if target is foil else 6))

    card = map_quality(one_patch_model, image, "x", settings=SETTINGS, foil=foil, explain_with=explainer)
    assert card.contrastivity.value == pytest.approx(1.0)
    assert card.contrastivity.reference == 0.0 and card.contrastivity.beats_reference


def test_relevance_beats_a_random_map_on_faithfulness_and_stability(one_patch_model) -> None:
    image = patch_image(6, background="dark")
    relevance = map_quality(one_patch_model, image, "x", method="relevance", settings=SETTINGS)
    rng = np.random.default_rng(0)
    random = map_quality(
        one_patch_model,
        image,
        "x",
        settings=SETTINGS,
        explain_with=lambda im, tg: _map_of(rng.random((GRID, GRID)), "random"),
    )
    assert relevance.faithfulness.value > random.faithfulness.value
    assert relevance.stability.value > 0.9 > random.stability.value
    assert relevance.understandability.value > random.understandability.value


def test_integrated_gradients_reports_its_completeness_error(one_patch_model) -> None:
    image = patch_image(6, background="dark")
    exp = explain(one_patch_model, image, "x", method="ig", steps=64)
    card = map_quality(one_patch_model, image, "x", explanation=exp, method="ig", settings=SETTINGS)
    assert not card.completeness.higher_is_better and card.completeness.reference == 1.0
    expected = abs(exp.extras["attribution_sum"] - (exp.score - exp.extras["baseline_score"]))
    assert card.completeness.value == pytest.approx(expected / abs(exp.score - exp.extras["baseline_score"]))
    assert card.completeness.value < 0.05  # 64 steps: the attributions add up to the score's change


def test_explain_quality_flag_prints_the_card_and_json_has_it(tmp_path, capsys) -> None:
    import json

    from counterclip.cli import run
    from counterclip.quality import QUALITIES

    path = tmp_path / "x.png"
    patch_image(6, background="dark").resize((64, 64)).save(path)
    base = [
        "explain",
        "--model",
        "bundled:shapes",
        "--image",
        str(path),
        "--labels",
        "a red circle,a blue square",
    ]
    assert run([*base, "--json"]) == 0
    assert "quality" not in json.loads(capsys.readouterr().out)
    assert run([*base, "--quality", "--json"]) == 0
    card = json.loads(capsys.readouterr().out)["quality"]
    assert set(QUALITIES) <= set(card) and card["contrastivity"]["value"] is not None  # the other label
    assert run([*base, "--quality"]) == 0
    shown = capsys.readouterr().out
    assert "quality of the map" in shown and all(q in shown for q in QUALITIES)
