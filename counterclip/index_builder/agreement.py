"""Whether stored vectors were made by a model: cosines between the vectors a collection holds and fresh
encodes of the same files, on a sample (``counterclip attach``; imported vectors are checked the same way).

A different model gives cosines near 0, a different preprocessing around 0.9-0.98, the same model and
pipeline above 0.999; `AGREEMENT_MIN` refuses all but the last, with the measured figures in the message.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from counterclip.errors import IndexFormatError

AGREEMENT_MIN = 0.99  # the lowest cosine on the sample a collection may show to count as the model's


@dataclass(frozen=True)
class Agreement:
    """Cosines of stored vectors to fresh encodes of their files, over a sample."""

    lowest: float
    median: float
    checked: int  # files encoded
    unreadable: int = 0  # sampled items whose file could not be read

    @classmethod
    def measure(cls, stored: np.ndarray, fresh: np.ndarray, unreadable: int = 0) -> Agreement:
        """From row-aligned ``(n, d)`` stored and fresh vectors (any length; both are made unit here)."""
        assert stored.shape == fresh.shape and len(stored), (stored.shape, fresh.shape)
        a = stored / np.maximum(np.linalg.norm(stored, axis=1, keepdims=True), 1e-12)
        b = fresh / np.maximum(np.linalg.norm(fresh, axis=1, keepdims=True), 1e-12)
        cosines = np.sum(a.astype(np.float64) * b, axis=1)
        return cls(float(cosines.min()), float(np.median(cosines)), len(cosines), unreadable)

    def describe(self) -> str:
        """``lowest 0.123, median 0.456 over 32 files``."""
        return f"lowest {self.lowest:.3f}, median {self.median:.3f} over {self.checked} files"

    def check(self, what: str, model: str, bound: float = AGREEMENT_MIN) -> None:
        """`IndexFormatError` naming ``what``, the model and the figures when the lowest cosine is below ``bound``."""
        if self.lowest < bound:
            raise IndexFormatError(
                f"{what}: its vectors were not made by {model} (cosine to fresh encodes of their files "
                f"{self.describe()}; needs >= {bound}): give the model (and preprocessing) that made them; "
                "nothing was written"
            )
