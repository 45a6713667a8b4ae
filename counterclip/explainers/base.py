"""The explanation object every explainer returns (CLIP explainers and the classical ones alike)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
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
        explains: what score the map explains, in a few words (``similarity to 'a red circle'``).
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
    explains: str = ""
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

    def summary(self, drop_extras: Sequence[str] = ()) -> dict[str, Any]:
        """JSON-ready form for printing: the pixel map left out (it belongs in a PNG), the small maps
        (patch map, token map, feature values) as lists, numpy values as Python values, and the extras
        in ``drop_extras`` (and those that are not JSON, like images) left out."""
        payload = self.to_dict(include_maps=False)
        payload["extras"] = {k: v for k, v in payload["extras"].items() if k not in drop_extras}
        for name in ("patch_map", "token_map", "feature_values"):
            value = getattr(self, name)
            if value is not None:
                payload[name] = np.asarray(value).tolist()
        return _plain(payload)


def _plain(value: Any) -> Any:
    """Numpy values (also nested in lists and dicts) as JSON-ready Python values."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _jsonable(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool, list, dict, tuple, np.ndarray, type(None)))
