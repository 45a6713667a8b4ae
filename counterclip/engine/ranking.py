"""Ranking of valid candidates: closest to the original first, with *distinct changes* among the k.

Five answers that all change the same thing (five shades of the same colour swap) show one way to move
the score, not five. Each candidate's *change* from the original is a feature vector (for images the
direction of its embedding difference; for captions the word positions it edits), and maximal marginal
relevance picks the next answer for being close to the original *and* unlike the changes already picked.
"""

from __future__ import annotations

import re

import numpy as np


def mmr_order(relevance: np.ndarray, features: np.ndarray, k: int, diversity: float) -> list[int]:
    """Greedy MMR: pick ``k`` rows that are relevant and unlike each other in ``features``.

    Each pick maximises ``(1 - diversity) * relevance(c) - diversity * max_{s in picked} cos(f_c, f_s)``;
    the first pick is therefore always the most relevant (ties to the smaller row).

    Args:
        relevance: ``(n,)`` how close each candidate is to the original (higher is closer).
        features: ``(n, m)`` unit rows; their cosine says how alike two candidates are.
        k: how many to pick.
        diversity: 0 = relevance order, 1 = pure novelty after the first.

    Returns:
        Row indices in pick order (``min(k, n)`` of them).
    """
    n = len(relevance)
    if n == 0 or k <= 0:
        return []
    assert features.shape[0] == n, (features.shape, n)
    relevance = np.asarray(relevance, dtype=np.float64)
    picked: list[int] = []
    max_sim = np.full(n, -np.inf)
    available = np.ones(n, dtype=bool)
    for _ in range(min(k, n)):
        redundancy = np.where(np.isfinite(max_sim), max_sim, 0.0)
        gain = np.where(available, (1.0 - diversity) * relevance - diversity * redundancy, -np.inf)
        best = int(np.argmax(gain))
        picked.append(best)
        available[best] = False
        max_sim = np.maximum(max_sim, features @ features[best])
    return picked


def change_directions(original: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """``(n, d)`` unit directions of each candidate's change from the original embedding."""
    diff = np.asarray(candidates, dtype=np.float64) - np.asarray(original, dtype=np.float64)
    return diff / np.maximum(np.linalg.norm(diff, axis=1, keepdims=True), 1e-12)


def alignment(original: str, candidate: str) -> tuple[int, set[int]]:
    """Word edit distance between two captions and where the candidate edits the original: ``2 i`` for
    the original's word ``i`` substituted or deleted, ``2 i + 1`` for words inserted after it (``-1``
    before the first). Case and punctuation are ignored."""
    x, y = _words(original), _words(candidate)
    rows = [list(range(len(y) + 1))]
    for i, wx in enumerate(x, 1):
        previous, current = rows[-1], [i]
        for j, wy in enumerate(y, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (wx != wy)))
        rows.append(current)
    edits: set[int] = set()
    i, j = len(x), len(y)
    while i or j:
        if i and j and rows[i][j] == rows[i - 1][j - 1] + (x[i - 1] != y[j - 1]):
            if x[i - 1] != y[j - 1]:
                edits.add(2 * (i - 1))
            i, j = i - 1, j - 1
        elif i and rows[i][j] == rows[i - 1][j] + 1:
            edits.add(2 * (i - 1))
            i -= 1
        else:
            edits.add(2 * i - 1)
            j -= 1
    return rows[-1][-1], edits


def edited_positions(original: str, candidate: str) -> set[int]:
    """Where a candidate caption edits the original (see `alignment`)."""
    return alignment(original, candidate)[1]


def edit_features(
    original: str, candidates: list[str], positions: list[set[int]] | None = None
) -> np.ndarray:
    """``(n, m)`` unit rows: which word positions of the original each candidate edits (one-hot);
    ``positions`` when the caller has them already (from `alignment`)."""
    if positions is None:
        positions = [edited_positions(original, text) for text in candidates]
    width = 2 * len(_words(original)) + 2
    features = np.zeros((len(candidates), width + 1))
    for row, edits in enumerate(positions):
        for p in edits:
            features[row, p + 1] = 1.0  # + 1: the "before the first word" insertion is -1
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def word_edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two texts counted in words (case and punctuation ignored)."""
    return alignment(a, b)[0]


_WORD = re.compile(r"[^\W_]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())
