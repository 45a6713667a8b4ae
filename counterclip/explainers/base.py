"""The explanation object every explainer returns (CLIP explainers and the classical ones alike)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Explanation:
    """An attribution map over pixels/patches or over tokens, plus what it explains and what it cost.

    Attributes:
        method: explainer name (``relevance``, ``gradcam``, ``ig``, ``lime``, ``pixel-cf``, ...).
        modality: ``image`` | ``text`` | ``tabular``.
        score: the target value explained (for the unmodified input).
        pixel_map: ``(H, W)`` float map at the input image's resolution, or None.
        patch_map: ``(gh, gw)`` map over ViT patches / conv cells, or None.
        tokens: token strings for a text map, or None.
        token_map: ``(len(tokens),)`` relevance per token, or None.
        feature_names / feature_values: tabular attributions.
        target: a short description of the target (``similarity to 'a red circle'``).
        forward_passes / backward_passes / seconds: cost of producing it.
        extras: method-specific data (convergence delta, trajectories, edited image...), JSON-friendly
            where possible.
    """

    method: str
    modality: str
    score: float
    pixel_map: np.ndarray | None = None
    patch_map: np.ndarray | None = None
    tokens: list[str] | None = None
    token_map: np.ndarray | None = None
    feature_names: list[str] | None = None
    feature_values: np.ndarray | None = None
    target: str = ""
    forward_passes: int = 0
    backward_passes: int = 0
    seconds: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, include_maps: bool = True) -> dict[str, Any]:
        """JSON-friendly dict (arrays become nested lists; large maps can be left out)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                if not include_maps:
                    continue
                value = value.tolist()
            out[f.name] = value
        out["extras"] = {
            k: (v.tolist() if isinstance(v, np.ndarray) else v)
            for k, v in self.extras.items()
            if _jsonable(v)
        }
        return out


def _jsonable(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool, list, dict, tuple, np.ndarray, type(None)))
