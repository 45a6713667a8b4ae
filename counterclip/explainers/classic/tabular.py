"""Tabular models: partial dependence (1-D, 2-D), ICE curves and LIME for one row.

Values come straight from scikit-learn's ``sklearn.inspection.partial_dependence`` and figures from its
``PartialDependenceDisplay``; nothing is re-implemented. The data and the model fitted on it come from
`counterclip.explainers.classic.tabular_data` (a user CSV or a scikit-learn bundled dataset); its names stay
importable from here.

Examples::

    >>> data = load_csv("houses.csv", target="price")
    >>> model = fit_model(data, kind="random-forest")
    >>> pdp = explain_partial_dependence(model, data, ["rooms"], kind="both", centered=True)
    >>> pdp_figure(pdp).savefig("pdp_rooms.png")
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from counterclip.errors import InputError
from counterclip.explainers.base import Explanation
from counterclip.explainers.classic.tabular_data import (  # noqa: F401 - re-exported
    BUNDLED_DATASETS,
    MODEL_KINDS,
    TASKS,
    TabularData,
    fit_model,
    load_bundled,
    load_csv,
)


class _Opaque:
    """Holds an object in `Explanation.extras` without it going into JSON (for figures)."""

    def __init__(self, value: Any) -> None:
        self.value = value


def explain_partial_dependence(
    model: Any,
    data: TabularData,
    features: Sequence[str | int],
    kind: str = "average",
    centered: bool = False,
    grid_resolution: int = 100,
    percentiles: tuple[float, float] = (0.05, 0.95),
    target_class: str | int | None = None,
    method: str = "auto",
) -> Explanation:
    """Partial dependence (1 or 2 features) and ICE curves via ``sklearn.inspection.partial_dependence``.

    Args:
        model: a fitted scikit-learn estimator.
        data: the rows to average over (``data.X``) and the feature metadata.
        features: one feature (1-D PDP / ICE) or two (2-D PDP), by name or index.
        kind: ``average`` (PDP), ``individual`` (ICE) or ``both``; 2-D needs ``average``.
        centered: centre ICE/PDP curves at the first grid point in the figure (the values stay raw).
        grid_resolution, percentiles, method: passed to scikit-learn unchanged.
        target_class: class whose probability is explained (classifiers). Default: the positive class of
            a binary model, else the class with the highest mean probability.

    Returns:
        `Explanation` (``method`` ``pdp``, ``ice`` or ``pdp-2d``) with ``feature_names`` the features;
        ``extras``: ``grid_values`` (one list of ``g_i`` values per feature), ``average`` ``(g,)`` or ``(g1, g2)`` and
        ``individual`` ``(n_rows, g)`` for the target output, exactly as scikit-learn returns them,
        ``target_index`` (the output row), ``pd_method`` (brute or recursion) and ``categories``.
        ``score`` is the mean prediction over ``data.X``; forward passes count rows predicted.
    """
    from sklearn.inspection import partial_dependence

    started = time.perf_counter()
    indices = _pd_features(data, features, kind)
    output_index, class_label = _target_output(model, target_class, data.X)
    result = partial_dependence(
        model,
        data.X,
        indices if len(indices) == 2 else indices[0],
        categorical_features=data.categorical or None,
        percentiles=percentiles,
        grid_resolution=grid_resolution,
        method=method,
        kind=kind,
    )
    used_method = _pd_method(model, kind, method)
    grid_points = int(np.prod([len(values) for values in result["grid_values"]]))
    extras = _pd_extras(result, data, indices, output_index, used_method, kind, centered, class_label)
    method_name = "pdp-2d" if len(indices) == 2 else ("pdp" if kind == "average" else "ice")
    return Explanation(
        method=method_name,
        modality="tabular",
        score=_mean_prediction(model, data.X, output_index),
        feature_names=[data.feature_names[i] for i in indices],
        explains=_target_description(data, class_label),
        forward_passes=data.X.shape[0] * grid_points if used_method == "brute" else 0,
        seconds=time.perf_counter() - started,
        extras=extras,
    )


def _pd_features(data: TabularData, features: Sequence[str | int], kind: str) -> list[int]:
    """The column indices of the one or two features asked, refused when the request cannot be drawn."""
    if kind not in ("average", "individual", "both"):
        raise InputError(f"unknown PDP kind {kind!r}; choose average, individual or both")
    if not 1 <= len(features) <= 2:
        raise InputError(f"partial dependence takes one or two features, got {len(features)}")
    indices = [data.feature_index(f) for f in features]
    if len(indices) == 2 and kind != "average":
        raise InputError(
            "ICE curves are 1-D: use one feature with --kind individual/both, or kind average for 2-D"
        )
    return indices


def _pd_extras(
    result: Any,
    data: TabularData,
    indices: list[int],
    output_index: int,
    used_method: str,
    kind: str,
    centered: bool,
    class_label: str | None,
) -> dict[str, Any]:
    """The PD explanation's extras: scikit-learn's grid and curves for the target output (and its class),
    how they were computed, and what ``PartialDependenceDisplay`` needs to draw them again."""
    categorical = [i for i in indices if i in data.categorical]
    extras: dict[str, Any] = {
        "grid_values": [np.asarray(values).tolist() for values in result["grid_values"]],  # lists: JSON-ready
        "target_index": output_index,
        "pd_method": used_method,
        "kind": kind,
        "centered": centered,
        "categories": {data.feature_names[i]: data.categories[i] for i in categorical},
        "feature_indices": indices,
        # What PartialDependenceDisplay needs to draw this result again (not JSON): see plots.pdp_figure.
        "display": _Opaque(
            {
                "pd_result": result,
                "feature_names": [data.label(name) for name in data.feature_names],  # with units
                "deciles": {
                    i: np.percentile(data.X[:, i], np.arange(10, 100, 10))
                    for i in indices
                    if i not in categorical
                },
                "is_categorical": [i in categorical for i in indices],
            }
        ),
    }
    if "average" in result:
        extras["average"] = np.asarray(result["average"][output_index])
    if "individual" in result:
        extras["individual"] = np.asarray(result["individual"][output_index])
    if class_label is not None:
        extras["target_class"] = class_label
    return extras


def _target_output(model: Any, target_class: str | int | None, X: np.ndarray) -> tuple[int, str | None]:
    """Row of scikit-learn's PD output to read, and the class it stands for (None for regressors)."""
    from sklearn.base import is_classifier

    if not is_classifier(model):
        if target_class is not None:
            raise InputError("--target-class applies to classifiers; this model is a regressor")
        return 0, None
    classes = [str(c) for c in model.classes_]
    if len(classes) == 2:
        # scikit-learn reports a binary classifier's positive class only.
        if target_class is not None and str(target_class) != classes[1]:
            raise InputError(
                f"partial dependence of a binary classifier is for its positive class {classes[1]!r}; "
                f"drop --target-class or pass {classes[1]!r}"
            )
        return 0, classes[1]
    if target_class is None:
        index = int(np.argmax(model.predict_proba(X).mean(axis=0)))
        return index, classes[index]
    if str(target_class) not in classes:
        raise InputError(
            f"unknown target class {target_class!r}; the model's classes are {', '.join(classes)}"
        )
    index = classes.index(str(target_class))
    return index, classes[index]


def _pd_method(model: Any, kind: str, method: str) -> str:
    """The method scikit-learn picks for ``method='auto'`` (mirrors its rules, to count passes)."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.ensemble._gb import BaseGradientBoosting
    from sklearn.ensemble._hist_gradient_boosting.gradient_boosting import BaseHistGradientBoosting
    from sklearn.tree import DecisionTreeRegressor

    if method != "auto":
        return method
    if kind != "average":
        return "brute"
    if isinstance(model, BaseGradientBoosting) and model.init is None:
        return "recursion"
    if isinstance(model, (BaseHistGradientBoosting, DecisionTreeRegressor, RandomForestRegressor)):
        return "recursion"
    return "brute"


def _mean_prediction(model: Any, X: np.ndarray, output_index: int) -> float:
    """Mean predicted value (regressor) or probability of the explained class (classifier)."""
    from sklearn.base import is_classifier

    if is_classifier(model):
        probabilities = model.predict_proba(X)
        column = 1 if probabilities.shape[1] == 2 else output_index
        return float(probabilities[:, column].mean())
    return float(np.mean(model.predict(X)))


def _target_description(data: TabularData, class_label: str | None) -> str:
    if class_label is None:
        return f"predicted {data.target_name}"
    return f"probability of {data.target_name} = {class_label!r}"


def explain_lime_tabular(
    model: Any,
    data: TabularData,
    row: int,
    target_class: str | int | None = None,
    num_samples: int = 2000,
    seed: int = 0,
) -> Explanation:
    """LIME weights of every feature for one row.

    Args:
        model: fitted estimator; classifiers need ``predict_proba``.
        data: training rows (LIME's sampling statistics) and metadata.
        row: index of the row of ``data.X`` to explain.
        target_class: class to explain (classifiers). Default: the predicted class.
        num_samples: perturbed samples.
        seed: LIME's random state.

    Returns:
        `Explanation` with ``feature_names`` all features and ``feature_values`` ``(n_features,)`` their
        LIME weights (0 for features LIME did not select); ``extras["conditions"]`` LIME's readable
        conditions ("rooms > 5.00") with weights, ``intercept``, ``local_prediction``, ``r2``.
    """
    started = time.perf_counter()
    classification = _lime_classifies(model, data, row)
    calls = {"forward": 0}

    def predict(rows: np.ndarray) -> np.ndarray:
        calls["forward"] += len(rows)
        return model.predict_proba(rows) if classification else model.predict(rows)

    instance = data.X[row]
    label, score, target = _lime_target(model, data, instance, classification, target_class)
    explanation = _lime_explainer(model, data, classification, seed).explain_instance(
        instance,
        predict,
        labels=(label,) if classification else (0,),
        num_features=len(data.feature_names),
        num_samples=num_samples,
    )
    key = label if classification else next(iter(explanation.as_map()))
    return Explanation(
        method="lime",
        modality="tabular",
        score=score,
        feature_names=list(data.feature_names),
        feature_values=_lime_weights(explanation, key, len(data.feature_names)),
        explains=target,
        forward_passes=calls["forward"],
        seconds=time.perf_counter() - started,
        extras={
            "row": row,
            "row_values": {name: float(v) for name, v in zip(data.feature_names, instance, strict=True)},
            "conditions": [[text, float(w)] for text, w in explanation.as_list(label=key)],
            "intercept": float(np.ravel([explanation.intercept[key]])[0]),
            "local_prediction": float(np.ravel(explanation.local_pred)[0]),
            "r2": float(explanation.score),
            "num_samples": num_samples,
        },
    )


def _lime_classifies(model: Any, data: TabularData, row: int) -> bool:
    """Whether LIME explains class probabilities (else a regressor's prediction); refuses a row out of
    range and a classifier without ``predict_proba``."""
    from sklearn.base import is_classifier

    if not 0 <= row < data.X.shape[0]:
        raise InputError(f"row {row} is out of range: the data has {data.X.shape[0]} rows")
    classification = is_classifier(model) or data.task == "classification"
    if classification and not hasattr(model, "predict_proba"):
        raise InputError(
            f"{type(model).__name__} has no predict_proba, which LIME classification needs; "
            "use a probabilistic classifier (random forest, gradient boosting, logistic regression)"
        )
    return classification


def _lime_weights(explanation: Any, key: int, n_features: int) -> np.ndarray:
    """LIME's weight of each feature ``(n_features,)`` for output ``key`` (0 where LIME did not select it)."""
    weights = np.zeros(n_features)
    for index, weight in explanation.as_map()[key]:
        weights[index] = weight
    return weights


def _lime_target(
    model: Any, data: TabularData, instance: np.ndarray, classification: bool, target_class: str | int | None
) -> tuple[int, float, str]:
    """The output LIME explains for one row: its label index (0 for a regressor), the model's score for it
    and what that score is, in words."""
    if not classification:
        return 0, float(model.predict(instance[None, :])[0]), f"predicted {data.target_name}"
    classes = [str(c) for c in model.classes_]
    probabilities = model.predict_proba(instance[None, :])[0]
    if target_class is None:
        label = int(np.argmax(probabilities))
    elif str(target_class) in classes:
        label = classes.index(str(target_class))
    else:
        raise InputError(
            f"unknown target class {target_class!r}; the model's classes are {', '.join(classes)}"
        )
    return label, float(probabilities[label]), f"probability of {data.target_name} = {classes[label]!r}"


def _lime_explainer(model: Any, data: TabularData, classification: bool, seed: int) -> Any:
    """LIME's tabular explainer over the training rows (its sampling statistics), continuous features
    discretised."""
    from lime.lime_tabular import LimeTabularExplainer

    return LimeTabularExplainer(
        data.X,
        feature_names=data.feature_names,
        categorical_features=data.categorical,
        categorical_names={i: levels for i, levels in data.categories.items()},
        class_names=[str(c) for c in model.classes_] if classification else None,
        mode="classification" if classification else "regression",
        discretize_continuous=True,
        random_state=seed,
    )


#: What ``explain-tabular --method`` takes.
TABULAR_METHODS: tuple[str, ...] = ("pdp", "ice", "pdp-2d", "lime", "compare")


@dataclass(frozen=True)
class TabularRequest:
    """What to compute on one data set."""

    method: str = "pdp"  # pdp | ice | pdp-2d | lime | compare (two models' PDPs on one axes)
    model: str = "random-forest"  # model kind fitted on the data (MODEL_KINDS)
    features: tuple[str, ...] = ()  # one feature (pdp, ice, compare) or two (pdp-2d)
    row: int = 0  # lime: the row explained
    centered: bool = False  # pdp / ice: curves centred at the first grid point
    compare_model: str = "linear"  # compare: the second model kind
    target_class: str | None = None  # classifiers: the class explained
    grid: int = 100  # grid points per feature
    samples: int = 2000  # lime: perturbed samples
    seed: int = 0  # model and LIME seed


@dataclass
class TabularResult:
    """The explanations of one request and the model kind behind each."""

    request: TabularRequest
    explanations: list[Explanation]
    models: list[str]


def run_tabular(data: TabularData, request: TabularRequest) -> TabularResult:
    """Fit the model(s) the request names on ``data`` and explain it (them) as asked."""
    if request.method not in TABULAR_METHODS:
        raise InputError(
            f"unknown tabular method {request.method!r}; choose one of {', '.join(TABULAR_METHODS)}"
        )
    for feature in request.features:
        data.feature_index(feature)
    model = fit_model(data, request.model, seed=request.seed)
    if request.method == "lime":
        lime = explain_lime_tabular(
            model, data, request.row, request.target_class, num_samples=request.samples, seed=request.seed
        )
        return TabularResult(request, [lime], [request.model])
    wanted = 2 if request.method == "pdp-2d" else 1
    if len(request.features) != wanted:
        raise InputError(
            f"--method {request.method} needs {wanted} --feature option(s), got {len(request.features)}"
        )
    kinds = [request.model] + ([request.compare_model] if request.method == "compare" else [])
    explanations = [
        explain_partial_dependence(
            model if index == 0 else fit_model(data, kind, seed=request.seed),
            data,
            list(request.features),
            kind="both" if request.method == "ice" else "average",
            centered=request.centered,
            grid_resolution=request.grid,
            target_class=request.target_class,
        )
        for index, kind in enumerate(kinds)
    ]
    return TabularResult(request, explanations, kinds)
