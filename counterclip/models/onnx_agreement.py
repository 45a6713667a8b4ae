"""How closely one set of embeddings follows another: the figures every ONNX tower is accepted on.

An export is compared with torch (`compare`: cosine per row, largest coordinate difference); an int8 tower
also with its fp32 one, by the neighbours an index of its embeddings finds (`recall_at_k`). Numpy only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from counterclip.errors import InputError
from counterclip.models.onnx_common import unit

RECALL_K = 10


@dataclass(frozen=True)
class Agreement:
    """How closely one set of embeddings follows a reference set (row by row)."""

    cosine_min: float  # worst row
    cosine_mean: float
    max_abs: float  # largest coordinate difference
    samples: int  # rows compared

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def compare(reference: np.ndarray, candidate: np.ndarray) -> Agreement:
    """Cosine per row and max abs difference of ``candidate`` ``(n, d)`` against ``reference`` ``(n, d)``."""
    assert reference.shape == candidate.shape, (reference.shape, candidate.shape)
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    cos = (unit(reference) * unit(candidate)).sum(axis=1)
    if not np.isfinite(candidate).all():
        cos = np.where(np.isfinite(cos), cos, -1.0)
    diff = np.abs(reference - candidate)
    return Agreement(
        cosine_min=float(cos.min()),
        cosine_mean=float(cos.mean()),
        max_abs=float(np.nan_to_num(diff, nan=np.inf).max()),
        samples=int(len(reference)),
    )


def recall_at_k(reference: np.ndarray, candidate: np.ndarray, k: int = RECALL_K) -> float:
    """Recall@k of an exact inner-product index of ``candidate`` against one of ``reference``.

    Each row of ``reference`` ``(n, d)`` queries both indexes (the fp32 query a user would send), itself left
    out; the result is the mean share of the reference index's ``k`` nearest neighbours that the candidate
    index also returns in its top ``k``. ``candidate`` ``(n, d)`` holds the same items in the same order.
    """
    assert reference.shape == candidate.shape, (reference.shape, candidate.shape)
    n = len(reference)
    if n <= k:
        raise InputError(f"recall@{k} needs more than {k} items, got {n}")
    queries = unit(reference)
    found = []
    for vectors in (unit(reference), unit(candidate)):
        scores = queries @ vectors.T
        np.fill_diagonal(scores, -np.inf)  # a query is not its own neighbour
        found.append(np.argsort(-scores, axis=1, kind="stable")[:, :k])
    hits = [len(set(a) & set(b)) for a, b in zip(found[0], found[1], strict=True)]
    return float(np.mean(hits) / k)
