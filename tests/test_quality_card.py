"""The quality card and its plain measures, each against a case with a known answer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from counterclip.quality import (
    QUALITIES,
    Measure,
    QualityCard,
    aggregate,
    agreement,
    average_overlap,
    completeness_error,
    concentration,
    gap_share,
    map_distance,
    pair_probability,
    presence_share,
    rank_correlation,
)


def test_agreement_is_one_for_the_same_change_a_ratio_for_a_smaller_and_zero_for_the_opposite() -> None:
    assert agreement(2.0, 2.0) == 1.0
    assert agreement(2.0, 1.0) == pytest.approx(0.5)
    assert agreement(-1.0, -4.0) == pytest.approx(0.25)
    assert agreement(2.0, -2.0) == 0.0
    assert agreement(0.0, 0.0) == 1.0 and agreement(1.0, 0.0) == 0.0


def test_gap_share_closes_the_asked_share_clipped_and_none_without_a_gap() -> None:
    assert gap_share(0.1, 0.5, 0.9) == pytest.approx(0.5)
    assert gap_share(0.1, 1.0, 0.9) == 1.0  # past the goal: the whole gap
    assert gap_share(0.8, 0.3, 0.1) == pytest.approx(5 / 7)  # a decrease: the goal lies below
    assert gap_share(0.5, 0.2, 0.9) == 0.0  # the wrong way
    assert gap_share(0.9, 0.95, 0.9) is None


def test_a_shuffled_or_replaced_answer_list_has_lower_overlap() -> None:
    answers = [3, 1, 4, 5, 9]
    assert average_overlap(answers, answers) == 1.0
    shuffled = average_overlap(answers, [9, 5, 4, 1, 3])
    assert 0 < shuffled < 1
    assert average_overlap(answers, [3, 1, 4, 2, 6]) < 1
    assert average_overlap(answers, [10, 11, 12, 13, 14]) == 0.0
    # by hand: depths 1..3 of [1, 2, 3] against [2, 1, 3] share 0/1, 2/2, 3/3
    assert average_overlap([1, 2, 3], [2, 1, 3]) == pytest.approx(2 / 3)
    assert presence_share(4, [[4, 5], [5], [1, 4]]) == pytest.approx(2 / 3)
    assert presence_share(4, []) is None


def test_pair_probability_is_a_two_way_softmax() -> None:
    assert pair_probability(np.array(3.0), np.array(3.0)) == pytest.approx(0.5)
    assert pair_probability(np.array(np.log(3.0)), np.array(0.0)) == pytest.approx(0.75)


def test_concentration_of_a_one_hot_and_a_flat_map() -> None:
    one_hot = np.zeros((4, 5))
    one_hot[2, 3] = -7.0  # the absolute mass counts
    assert concentration(one_hot, 0.1) == 1.0
    assert concentration(np.ones((4, 5)), 0.1) == pytest.approx(0.1)
    assert concentration(np.zeros((4, 5)), 0.25) == pytest.approx(0.25)


def test_a_constant_map_has_no_contrastivity_and_distance_reads_place_and_sign() -> None:
    rng = np.random.default_rng(0)
    values = rng.random((4, 4))
    assert map_distance(np.full((4, 4), 2.0), np.full((4, 4), 5.0)) == 0.0
    assert map_distance(values, 3 * values) == pytest.approx(0.0)
    assert map_distance(values, -values) == pytest.approx(1.0)
    first, second = np.zeros((2, 2)), np.zeros((2, 2))
    first[0, 0], second[1, 1] = 1.0, 1.0
    assert map_distance(first, second) == pytest.approx(1.0)


def test_rank_correlation_of_the_same_a_reversed_and_a_constant_map() -> None:
    values = np.arange(12.0).reshape(3, 4)
    assert rank_correlation(values, values**2) == pytest.approx(1.0)
    assert rank_correlation(values, -values) == pytest.approx(-1.0)
    assert rank_correlation(np.ones(5), np.ones(5)) == 1.0
    assert rank_correlation(np.ones(5), np.arange(5.0)) == 0.0
    assert rank_correlation(np.array([1.0, 1.0, 2.0]), np.array([0.0, 0.0, 5.0])) == pytest.approx(1.0)


def test_gradient_times_input_on_a_linear_model_has_completeness_error_zero() -> None:
    torch.manual_seed(0)
    weights, bias = torch.randn(3, 8, 8), 0.7
    image = torch.rand(3, 8, 8, requires_grad=True)
    score = (weights * image).sum() + bias
    (gradient,) = torch.autograd.grad(score, image)
    attributions = (gradient * image).detach()  # gradient x input, baseline 0
    baseline_score = bias
    error = completeness_error(float(attributions.sum()), float(score.detach()), baseline_score)
    assert error == pytest.approx(0.0, abs=1e-6)
    assert completeness_error(
        float(attributions.sum()) * 0.5, float(score.detach()), baseline_score
    ) == pytest.approx(0.5)
    assert completeness_error(1.0, 2.0, 2.0) is None


def _card(values: dict[str, float | None], reference: float = 0.5) -> QualityCard:
    return QualityCard(
        "x",
        **{
            name: Measure(
                values.get(name), f"def {name}", name != "understandability", reference, "baseline", "s"
            )
            for name in QUALITIES
        },
        forward_passes=3,
        seconds=0.5,
    )


def test_a_measure_beats_its_reference_in_its_own_direction() -> None:
    assert Measure(0.7, "d", True, 0.5).beats_reference is True
    assert Measure(0.7, "d", False, 0.5).beats_reference is False
    assert Measure(0.5, "d", True, 0.5).beats_reference is False
    assert Measure(None, "d", True, 0.5).beats_reference is None
    assert Measure(0.7, "d").beats_reference is None


def test_a_card_survives_json_and_aggregates_to_means() -> None:
    first = _card({"faithfulness": 1.0, "understandability": 1.0, "stability": 0.2})
    second = _card({"faithfulness": 0.5, "understandability": 3.0, "stability": None})
    again = QualityCard.from_dict(json.loads(json.dumps(first.to_dict())))
    assert again == first
    assert len(first.lines()) == 5 and first.lines()[0].startswith("faithfulness 1.00 (baseline 0.50")
    mean = aggregate([first, second], "two")
    assert mean.faithfulness.value == pytest.approx(0.75)
    assert mean.faithfulness.details["beats_reference_rate"] == pytest.approx(0.5)
    assert mean.understandability.value == pytest.approx(2.0) and not mean.understandability.higher_is_better
    assert mean.understandability.details["beats_reference_rate"] == 0.0
    assert mean.stability.value == pytest.approx(0.2) and mean.stability.details["measured"] == 1
    assert mean.completeness.value is None
    assert mean.forward_passes == 6
