"""Tabular data and models for the tabular explainers: a user CSV (numbers, or text columns treated as
categorical and ordinal-coded) or one of scikit-learn's bundled datasets (``diabetes``, ``wine``,
``breast_cancer``; none needs a download), and the scikit-learn model fitted on it.

Examples::

    >>> data = load_csv("houses.csv", target="price")
    >>> model = fit_model(data, kind="random-forest")
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from counterclip.errors import InputError

BUNDLED_DATASETS = ("diabetes", "wine", "breast_cancer")
#: What each bundled dataset's target is (scikit-learn names every one "target").
BUNDLED_TARGETS = {
    "diabetes": "disease progression one year after baseline",
    "wine": "cultivar",
    "breast_cancer": "diagnosis",
}
#: The diabetes features, in the units of the unscaled data (scikit-learn's DESCR).
DIABETES_UNITS = {
    "age": "years",
    "sex": "1 or 2",
    "bmi": "body mass index, kg/m\u00b2",
    "bp": "average blood pressure, mm Hg",
    "s1": "total serum cholesterol, mg/dL",
    "s2": "low-density lipoproteins, mg/dL",
    "s3": "high-density lipoproteins, mg/dL",
    "s4": "total cholesterol / HDL",
    "s5": "log of serum triglycerides",
    "s6": "blood sugar level, mg/dL",
}
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
    units: dict[str, str] = field(default_factory=dict)  # feature -> what it measures, in its units

    def label(self, name: str) -> str:
        """A feature's name as a plot axis reads it: "bmi (body mass index, kg/m²)"."""
        return f"{name} ({self.units[name]})" if name in self.units else name

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
    # diabetes in its own units (scikit-learn's default centres and scales every column)
    bunch = loader(scaled=False) if name == "diabetes" else loader()
    if task == "classification":
        y = np.asarray([str(bunch.target_names[i]) for i in bunch.target])
    else:
        y = np.asarray(bunch.target, dtype=np.float64)
    return TabularData(
        X=np.asarray(bunch.data, dtype=np.float64),
        y=y,
        feature_names=[str(n) for n in bunch.feature_names],
        target_name=BUNDLED_TARGETS[name],
        task=task,
        source=f"sklearn:{name}",
        units=dict(DIABETES_UNITS) if name == "diabetes" else {},
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
    columns = _read_columns(path, target)
    raw_target = columns.pop(target)
    task, y = _target_values(raw_target, target, task)
    features, matrix, categorical, categories = _code_features(columns)
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


def _read_columns(path: Path, target: str) -> dict[str, list[str]]:
    """The CSV's cells by column name (stripped), refused when the header, a row or a cell is missing."""
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
    return columns


def _target_values(raw_target: list[str], target: str, task: str) -> tuple[str, np.ndarray]:
    """The task (``auto`` resolved) and the target column as ``y``: floats for regression, else labels."""
    numeric_target = _as_floats(raw_target)
    if task == "auto":
        few_integers = numeric_target is not None and (
            len(set(raw_target)) <= 10 and all(float(v).is_integer() for v in numeric_target)
        )
        task = "classification" if numeric_target is None or few_integers else "regression"
    if task != "regression":
        return task, np.asarray(raw_target)
    if numeric_target is None:
        example = next(v for v in raw_target if _as_floats([v]) is None)
        raise InputError(
            f"target column {target!r} is not numeric (e.g. {example!r}); regression needs numbers, "
            "use --task classification"
        )
    return task, np.asarray(numeric_target, dtype=np.float64)


def _code_features(
    columns: dict[str, list[str]],
) -> tuple[list[str], list[list[float]], list[int], dict[int, list[str]]]:
    """Feature names, their values column by column (text columns ordinal-coded in sorted order), the
    categorical columns and each one's categories."""
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
    return features, matrix, categorical, categories


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
