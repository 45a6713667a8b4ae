"""Ranking of valid candidates: proximity to the original with diversity (maximal marginal relevance)."""

from __future__ import annotations

import numpy as np


def mmr_order(original: np.ndarray, candidates: np.ndarray, k: int, diversity: float) -> list[int]:
    """Greedy MMR: pick ``k`` rows of ``candidates`` close to ``original`` and unlike each other.

    Each pick maximises ``(1 - diversity) * cos(c, original) - diversity * max_{s in picked} cos(c, s)``;
    the first pick is therefore always the candidate closest to the original.

    Args:
        original: ``(d,)`` unit vector.
        candidates: ``(n, d)`` unit vectors.
        k: how many to pick.
        diversity: 0 = pure proximity order, 1 = pure novelty after the first.

    Returns:
        Row indices into ``candidates`` in pick order (``min(k, n)`` of them).
    """
    n = len(candidates)
    if n == 0 or k <= 0:
        return []
    assert candidates.shape[1] == original.shape[0]
    relevance = candidates @ original
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
