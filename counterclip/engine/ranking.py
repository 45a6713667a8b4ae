"""Ranking of valid candidates: proximity to the original with diversity (maximal marginal relevance)."""

from __future__ import annotations

import numpy as np


def mmr_order(
    original: np.ndarray,
    candidates: np.ndarray,
    k: int,
    diversity: float,
    relevance: np.ndarray | None = None,
) -> list[int]:
    """Greedy MMR: pick ``k`` rows of ``candidates`` close to ``original`` and unlike each other.

    Each pick maximises ``(1 - diversity) * relevance(c) - diversity * max_{s in picked} cos(c, s)``, with
    ``relevance(c) = cos(c, original)`` unless given; the first pick is therefore always the most relevant.

    Args:
        original: ``(d,)`` unit vector.
        candidates: ``(n, d)`` unit vectors.
        k: how many to pick.
        diversity: 0 = pure proximity order, 1 = pure novelty after the first.
        relevance: ``(n,)`` proximity scores overriding the cosine (e.g. fewest word edits for captions).

    Returns:
        Row indices into ``candidates`` in pick order (``min(k, n)`` of them).
    """
    n = len(candidates)
    if n == 0 or k <= 0:
        return []
    assert candidates.shape[1] == original.shape[0]
    relevance = candidates @ original if relevance is None else np.asarray(relevance, dtype=np.float32)
    picked: list[int] = []
    max_sim = np.full(n, -np.inf, dtype=np.float32)
    available = np.ones(n, dtype=bool)
    for _ in range(min(k, n)):
        redundancy = np.where(np.isfinite(max_sim), max_sim, 0.0)
        gain = (1.0 - diversity) * relevance - diversity * redundancy
        gain = np.where(available, gain, -np.inf)
        # ties go to the smaller row index (candidates arrive sorted by distance)
        best = int(np.argmax(gain))
        picked.append(best)
        available[best] = False
        max_sim = np.maximum(max_sim, candidates @ candidates[best])
    return picked


def word_edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two texts counted in words (case and punctuation ignored)."""
    x, y = _words(a), _words(b)
    previous = list(range(len(y) + 1))
    for i, wx in enumerate(x, 1):
        current = [i]
        for j, wy in enumerate(y, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (wx != wy)))
        previous = current
    return previous[-1]


def _words(text: str) -> list[str]:
    return "".join(ch if ch.isalnum() else " " for ch in text.lower()).split()
