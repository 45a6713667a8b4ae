"""Tabular explainers: PDP/ICE values equal scikit-learn's exactly, LIME finds the one used feature, CSV errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from classic_doubles import write_houses
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.inspection import partial_dependence

from counterclip.errors import InputError
from counterclip.explainers.classic import (
    TabularData,
    explain_lime_tabular,
    explain_partial_dependence,
    fit_model,
    load_bundled,
    load_csv,
)
from counterclip.report.classic import pdp_figure


@pytest.fixture(scope="module")
def diabetes_forest():
    data = load_bundled("diabetes")
    return data, fit_model(data, "random-forest")


def test_pdp_1d_equals_sklearn(diabetes_forest) -> None:
    data, model = diabetes_forest
    explanation = explain_partial_dependence(model, data, ["bmi"], grid_resolution=25)
    expected = partial_dependence(model, data.X, 2, grid_resolution=25)
    np.testing.assert_array_equal(explanation.extras["grid_values"][0], expected["grid_values"][0])
    np.testing.assert_array_equal(explanation.extras["average"], expected["average"][0])
    assert explanation.method == "pdp" and explanation.feature_names == ["bmi"]
    assert explanation.extras["pd_method"] == "recursion" and explanation.forward_passes == 0
    assert explanation.score == pytest.approx(float(model.predict(data.X).mean()))


def test_ice_equals_sklearn_for_a_multiclass_target() -> None:
    data = load_bundled("wine")
    model = fit_model(data, "gradient-boosting")
    explanation = explain_partial_dependence(
        model, data, ["proline"], kind="both", centered=True, grid_resolution=15, target_class="class_2"
    )
    expected = partial_dependence(model, data.X, [12], kind="both", grid_resolution=15)
    class_row = list(model.classes_).index("class_2")
    np.testing.assert_array_equal(explanation.extras["individual"], expected["individual"][class_row])
    np.testing.assert_array_equal(explanation.extras["average"], expected["average"][class_row])
    assert explanation.method == "ice" and explanation.extras["target_class"] == "class_2"
    assert explanation.forward_passes == data.X.shape[0] * 15  # brute force: every row at every grid point


def test_pdp_2d_equals_sklearn() -> None:
    data = load_bundled("breast_cancer")
    model = fit_model(data, "linear")
    explanation = explain_partial_dependence(model, data, ["mean radius", "mean texture"], grid_resolution=8)
    expected = partial_dependence(model, data.X, [(0, 1)], grid_resolution=8)
    np.testing.assert_array_equal(explanation.extras["average"], expected["average"][0])
    assert explanation.extras["average"].shape == (8, 8) and explanation.method == "pdp-2d"
    assert explanation.extras["target_class"] == "malignant"  # scikit-learn reports the positive class


def test_csv_categorical_pdp_equals_sklearn(tmp_path: Path) -> None:
    data = load_csv(write_houses(tmp_path / "houses.csv"), target="price")
    assert data.task == "regression" and data.feature_names == ["rooms", "city", "age"]
    assert data.categorical == [1] and data.categories == {1: ["east", "north", "south"]}
    model = fit_model(data, "gradient-boosting")
    explanation = explain_partial_dependence(model, data, ["city"])
    expected = partial_dependence(model, data.X, [1], categorical_features=[1])
    np.testing.assert_array_equal(explanation.extras["grid_values"][0], [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(explanation.extras["average"], expected["average"][0])
    assert explanation.extras["categories"] == {"city": ["east", "north", "south"]}
    east, north, south = explanation.extras["average"]
    assert north > east > south  # the planted city effect (100 > 40 > 0)
    axis = pdp_figure(explanation).axes[-1]  # scikit-learn draws in a new axes over the one it is given
    assert [label.get_text() for label in axis.get_xticklabels()] == ["east", "north", "south"]


class OnlyFeatureTwo(ClassifierMixin, BaseEstimator):
    """A classifier whose probability depends on column 2 alone."""

    classes_ = np.array([0, 1])

    def fit(self, X: np.ndarray, y: np.ndarray) -> OnlyFeatureTwo:
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        positive = 1.0 / (1.0 + np.exp(-4.0 * np.asarray(X)[:, 2]))
        return np.column_stack([1.0 - positive, positive])


class ThreeTimesFeatureOne(RegressorMixin, BaseEstimator):
    """A regressor returning 3 * column 1."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> ThreeTimesFeatureOne:
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return 3.0 * np.asarray(X)[:, 1]


def synthetic(task: str) -> TabularData:
    X = np.random.default_rng(0).normal(size=(400, 5))
    return TabularData(
        X=X, y=np.zeros(400), feature_names=[f"x{i}" for i in range(5)], target_name="y", task=task
    )


@pytest.mark.parametrize(
    ("model", "task", "used"),
    [(OnlyFeatureTwo(), "classification", 2), (ThreeTimesFeatureOne(), "regression", 1)],
)
def test_lime_recovers_the_one_used_feature(model, task: str, used: int) -> None:
    data = synthetic(task)
    explanation = explain_lime_tabular(model, data, row=7, num_samples=1500, seed=0)
    weights = np.abs(explanation.feature_values)
    assert int(np.argmax(weights)) == used
    assert weights[used] > 3 * np.delete(weights, used).max()
    assert explanation.forward_passes == 1500 and explanation.feature_names == data.feature_names
    assert explanation.extras["conditions"][0][0].find(f"x{used}") >= 0


def test_lime_needs_predict_proba_for_classification() -> None:
    from sklearn.svm import LinearSVC

    data = synthetic("classification")
    model = LinearSVC().fit(data.X, (data.X[:, 0] > 0).astype(int))
    with pytest.raises(InputError, match="LinearSVC has no predict_proba"):
        explain_lime_tabular(model, data, row=0)


def test_csv_errors_name_the_problem(tmp_path: Path) -> None:
    houses = write_houses(tmp_path / "houses.csv")
    with pytest.raises(InputError, match="target column 'cost' is not in houses.csv"):
        load_csv(houses, target="cost")
    data = load_csv(houses, target="price")
    with pytest.raises(InputError, match="feature 'garden' is not in houses.csv"):
        explain_partial_dependence(fit_model(data, "linear"), data, ["garden"])
    with pytest.raises(InputError, match="target column 'city' is not numeric .*use --task classification"):
        load_csv(houses, target="city", task="regression")
    assert load_csv(houses, target="city").task == "classification"
    holes = tmp_path / "holes.csv"
    holes.write_text("a,b\n1,2\n,3\n4,5\n")
    with pytest.raises(InputError, match="column 'a' of holes.csv has 1 empty cells"):
        load_csv(holes, target="b")


def test_comparison_figure_draws_both_models_values(diabetes_forest) -> None:
    data, forest = diabetes_forest
    linear = fit_model(data, "linear")
    explanations = [
        explain_partial_dependence(m, data, ["bmi"], grid_resolution=20) for m in (forest, linear)
    ]
    figure = pdp_figure(explanations, labels=["forest", "linear"])
    lines = [
        line for axis in figure.axes for line in axis.get_lines() if line.get_label() in ("forest", "linear")
    ]
    assert [line.get_label() for line in lines] == ["forest", "linear"]
    for line, explanation in zip(lines, explanations, strict=True):
        np.testing.assert_allclose(line.get_ydata(), explanation.extras["average"])
