"""Whether stored vectors were made by a model: cosines between the vectors an index or a collection holds
and fresh encodes of the same files, on a sample. One measure for every place that trusts vectors it did
not just compute: the fast decode at build, imports (`parity`), `check --model`, and attached vector-store
collections (`stores.attach`).

A different model gives cosines near 0, a different preprocessing around 0.9-0.98, the same model and
pipeline above 0.999.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from counterclip.errors import IndexFormatError

AGREEMENT_MIN = (
    0.99  # an attached collection's lowest cosine on the sample (its own pipeline may differ a little)
)


@dataclass(frozen=True)
class Agreement:
    """Cosines of vectors to fresh exact encodes of the same files, on a sample."""

    samples: int  # files measured
    lowest: float | None  # None: no file could be measured
    median: float | None
    bound: float  # the line it is held to
    below: list[dict[str, Any]] = field(default_factory=list)  # [{path, cosine}] under the bound (<= 10)
    unreadable: int = 0  # sampled items whose file could not be read (not measured)

    @property
    def holds(self) -> bool:
        """Nothing measured is below the bound (an empty sample holds: there was nothing to contradict)."""
        return self.lowest is None or self.lowest >= self.bound

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def in_words(self) -> str:
        """``lowest cosine 0.999987, median 0.999999 on 32 files (bound 0.999)``."""
        if self.lowest is None:
            return "no file could be measured"
        return (
            f"lowest cosine {self.lowest:.6f}, median {self.median:.6f} on {self.samples} files "
            f"(bound {self.bound})"
        )

    def check(self, what: str, model: str) -> None:
        """`IndexFormatError` naming ``what``, the model and the figures when the sample is below the bound."""
        if not self.holds:
            raise IndexFormatError(
                f"{what}: its vectors were not made by {model} (cosine to fresh encodes of their files: "
                f"{self.in_words()}): give the model (and preprocessing) that made them; nothing was written"
            )


def agreement(
    vectors: np.ndarray, fresh: np.ndarray, paths: Sequence[str], bound: float, unreadable: int = 0
) -> Agreement:
    """Row-wise cosine of ``vectors`` ``(n, d)`` to ``fresh`` ``(n, d)`` (any norms), as an `Agreement`."""
    if len(paths) == 0:
        return Agreement(0, None, None, bound, unreadable=unreadable)
    a = np.asarray(vectors, dtype=np.float64)
    b = np.asarray(fresh, dtype=np.float64)
    cosines = (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    order = np.argsort(cosines, kind="stable")
    below = [{"path": str(paths[i]), "cosine": float(cosines[i])} for i in order if cosines[i] < bound][:10]
    return Agreement(len(paths), float(cosines.min()), float(np.median(cosines)), bound, below, unreadable)
