"""Tabular models: partial dependence (1-D, 2-D), ICE curves and LIME for one row.

Values come straight from scikit-learn's ``sklearn.inspection.partial_dependence`` and figures from its
``PartialDependenceDisplay``; nothing is re-implemented. Data is a user CSV (numbers, or text columns
treated as categorical and ordinal-coded) or one of scikit-learn's bundled datasets (``diabetes``,
``wine``, ``breast_cancer``; none needs a download).

Examples::

    >>> data = load_csv("houses.csv", target="price")
    >>> model = fit_model(data, kind="random-forest")
    >>> pdp = explain_partial_dependence(model, data, ["rooms"], kind="both", centered=True)
    >>> pdp_figure(pdp).savefig("pdp_rooms.png")
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from counterclip.errors import InputError
from counterclip.explainers.base import Explanation

BUNDLED_DATASETS = ("diabetes", "wine", "breast_cancer")
MODEL_KINDS = ("random-forest", "gradient-boosting", "linear")
TASKS = ("auto", "regression", "classification")


@dataclass
class TabularData:
    """A numeric feature matrix with its names, categorical columns and target."""

    X: np.ndarray  # (n_rows, n_features) float64; categorical columns hold ordinal codes 0..k-1
    y: np.ndarray  # (n_rows,) float64 for regression, labels (str or int) for classification
    feature_names: list[str]  # one per column of X
    target_name: str  # the target column's name
    task: str  # "regression" | "classification"
    categorical: list[int] = field(default_factory=list)  # indices of categorical columns of X
    categories: dict[int, list[str]] = field(default_factory=dict)  # column -> category for each code
    source: str = ""  # where it came from ("houses.csv", "sklearn:wine")

    def feature_index(self, name_or_index: str | int) -> int:
        """Column index of a feature given by name (or index); `InputError` naming it if absent."""
        if name_or_index in self.feature_names:
            return self.feature_names.index(name_or_index)
        text = str(name_or_index)
        if text.isdigit() and int(text) < len(self.feature_names):
            return int(text)
        raise InputError(
            f"feature {name_or_index!r} is not in {self.source or 'the data'} "
            f"(features: {', '.join(self.feature_names)})"
        )


def load_bundled(name: str) -> TabularData:
    """One of scikit-learn's bundled datasets: ``diabetes`` (regression), ``wine``, ``breast_cancer``."""
    from sklearn import datasets

    loaders = {
        "diabetes": (datasets.load_diabetes, "regression"),
        "wine": (datasets.load_wine, "classification"),
        "breast_cancer": (datasets.load_breast_cancer, "classification"),
    }
    if name not in loaders:
        raise InputError(f"unknown bundled dataset {name!r}; choose one of {', '.join(BUNDLED_DATASETS)}")
    loader, task = loaders[name]
    bunch = loader()
    if task == "classification":
        y = np.asarray([str(bunch.target_names[i]) for i in bunch.target])
    else:
        y = np.asarray(bunch.target, dtype=np.float64)
    return TabularData(
        X=np.asarray(bunch.data, dtype=np.float64),
        y=y,
        feature_names=[str(n) for n in bunch.feature_names],
        target_name="target",
        task=task,
        source=f"sklearn:{name}",
    )


def load_csv(path: str | Path, target: str, task: str = "auto") -> TabularData:
    """Read a CSV with a header row; numeric columns stay numbers, text columns become categorical.

    Args:
        path: the CSV file.
        target: name of the target column.
        task: ``auto`` (text target or at most 10 distinct integer values: classification), ``regression``
            or ``classification``.

    Returns:
        `TabularData` with every column but ``target`` as a feature.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"CSV file {path} does not exist")
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if len(rows) < 3:
        raise InputError(f"{path} needs a header row and at least two data rows")
    header = [name.strip() for name in rows[0]]
    body = [row for row in rows[1:] if any(cell.strip() for cell in row)]
    if target not in header:
        raise InputError(f"target column {target!r} is not in {path.name} (columns: {', '.join(header)})")
    for number, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise InputError(f"{path.name} line {number} has {len(row)} fields, the header has {len(header)}")
    columns = {name: [row[i].strip() for row in body] for i, name in enumerate(header)}
    for name, cells in columns.items():
        empty = sum(1 for cell in cells if cell == "")
        if empty:
            raise InputError(
                f"column {name!r} of {path.name} has {empty} empty cells; fill or drop those rows"
            )
    raw_target = columns.pop(target)
    numeric_target = _as_floats(raw_target)
    if task == "auto":
        few_integers = numeric_target is not None and (
            len(set(raw_target)) <= 10 and all(float(v).is_integer() for v in numeric_target)
        )
        task = "classification" if numeric_target is None or few_integers else "regression"
    if task == "regression":
        if numeric_target is None:
            example = next(v for v in raw_target if _as_floats([v]) is None)
            raise InputError(
                f"target column {target!r} is not numeric (e.g. {example!r}); regression needs numbers, "
                "use --task classification"
            )
        y = np.asarray(numeric_target, dtype=np.float64)
    else:
        y = np.asarray(raw_target)
    features, matrix, categorical, categories = [], [], [], {}
    for name, cells in columns.items():
        values = _as_floats(cells)
        if values is None:
            levels = sorted(set(cells))
            codes = {level: code for code, level in enumerate(levels)}
            values = [float(codes[cell]) for cell in cells]
            categorical.append(len(features))
            categories[len(features)] = levels
        features.append(name)
        matrix.append(values)
    if not features:
        raise InputError(f"{path.name} has no feature columns besides the target {target!r}")
    return TabularData(
        X=np.asarray(matrix, dtype=np.float64).T,
        y=y,
        feature_names=features,
        target_name=target,
        task=task,
        categorical=categorical,
        categories=categories,
        source=path.name,
    )


def _as_floats(cells: Sequence[str]) -> list[float] | None:
    """The cells as floats, or None if any is not a finite number."""
    try:
        values = [float(cell) for cell in cells]
    except ValueError:
        return None
    return values if all(math.isfinite(v) for v in values) else None


def fit_model(data: TabularData, kind: str = "random-forest", seed: int = 0) -> Any:
    """Fit a scikit-learn model to ``data``.

    Args:
        data: features and target.
        kind: ``random-forest``, ``gradient-boosting`` or ``linear`` (ridge / logistic regression on
            standardized numbers and one-hot categories).
        seed: random state.

    Returns:
        The fitted estimator (classifiers have ``predict_proba``).
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import (
        GradientBoostingClassifier,
        GradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    classification = data.task == "classification"
    if kind == "random-forest":
        cls = RandomForestClassifier if classification else RandomForestRegressor
        model = cls(n_estimators=100, random_state=seed, n_jobs=1)
    elif kind == "gradient-boosting":
        cls = GradientBoostingClassifier if classification else GradientBoostingRegressor
        model = cls(random_state=seed)
    elif kind == "linear":
        encode = ColumnTransformer(
            [("categorical", OneHotEncoder(handle_unknown="ignore"), data.categorical)],
            remainder=StandardScaler(),
        )
        head = LogisticRegression(max_iter=2000) if classification else Ridge(alpha=1.0)
        model = make_pipeline(encode, head)
    else:
        raise InputError(f"unknown model kind {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
    return model.fit(data.X, data.y)


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
    if kind not in ("average", "individual", "both"):
        raise InputError(f"unknown PDP kind {kind!r}; choose average, individual or both")
    if not 1 <= len(features) <= 2:
        raise InputError(f"partial dependence takes one or two features, got {len(features)}")
    indices = [data.feature_index(f) for f in features]
    if len(indices) == 2 and kind != "average":
        raise InputError(
            "ICE curves are 1-D: use one feature with --kind individual/both, or kind average for 2-D"
        )
    output_index, class_label = _target_output(model, target_class, data.X)
    categorical = [i for i in indices if i in data.categorical]
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
                "feature_names": list(data.feature_names),
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
    names = [data.feature_names[i] for i in indices]
    method_name = "pdp-2d" if len(indices) == 2 else ("pdp" if kind == "average" else "ice")
    return Explanation(
        method=method_name,
        modality="tabular",
        score=_mean_prediction(model, data.X, output_index),
        feature_names=names,
        explains=_target_description(data, class_label),
        forward_passes=data.X.shape[0] * grid_points if used_method == "brute" else 0,
        seconds=time.perf_counter() - started,
        extras=extras,
    )


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
    from lime.lime_tabular import LimeTabularExplainer
    from sklearn.base import is_classifier

    started = time.perf_counter()
    if not 0 <= row < data.X.shape[0]:
        raise InputError(f"row {row} is out of range: the data has {data.X.shape[0]} rows")
    classification = is_classifier(model) or data.task == "classification"
    if classification and not hasattr(model, "predict_proba"):
        raise InputError(
            f"{type(model).__name__} has no predict_proba, which LIME classification needs; "
            "use a probabilistic classifier (random forest, gradient boosting, logistic regression)"
        )
    calls = {"forward": 0}

    def predict(rows: np.ndarray) -> np.ndarray:
        calls["forward"] += len(rows)
        return model.predict_proba(rows) if classification else model.predict(rows)

    instance = data.X[row]
    if classification:
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
        score = float(probabilities[label])
        target = f"probability of {data.target_name} = {classes[label]!r}"
    else:
        label = 0
        score = float(model.predict(instance[None, :])[0])
        target = f"predicted {data.target_name}"
    explainer = LimeTabularExplainer(
        data.X,
        feature_names=data.feature_names,
        categorical_features=data.categorical,
        categorical_names={i: levels for i, levels in data.categories.items()},
        class_names=[str(c) for c in model.classes_] if classification else None,
        mode="classification" if classification else "regression",
        discretize_continuous=True,
        random_state=seed,
    )
    n_features = len(data.feature_names)
    explanation = explainer.explain_instance(
        instance,
        predict,
        labels=(label,) if classification else (0,),
        num_features=n_features,
        num_samples=num_samples,
    )
    weights = np.zeros(n_features)
    local_map = explanation.as_map()
    key = label if classification else next(iter(local_map))
    for index, weight in local_map[key]:
        weights[index] = weight
    return Explanation(
        method="lime",
        modality="tabular",
        score=score,
        feature_names=list(data.feature_names),
        feature_values=weights,
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
