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

    def flags(self) -> list[str]:
        """What a person should know before reading the map, in words: random weights (set
        ``extras["random_weights"]``), an empty map (every value 0) or a flat one (values barely differ).
        """
        notes = []
        if self.extras.get("random_weights"):
            notes.append("random weights: the model learned nothing, so this map shows no learned evidence")
        for name, values in (("map", self.pixel_map), ("word map", self.token_map)):
            if values is None:
                continue
            array = np.nan_to_num(np.asarray(values, dtype=np.float64))
            magnitude = float(np.abs(array).max()) if array.size else 0.0
            if magnitude <= 1e-12:
                notes.append(
                    f"empty {name}: every value is 0, so the method found nothing that moves the score"
                )
            elif float(array.max() - array.min()) < 0.05 * magnitude:
                notes.append(f"flat {name}: every part counts about the same, so it singles out nothing")
        return notes

    def show(self, image: Any = None, **options: Any) -> Any:
        """The labelled figure of this explanation, in one call (a notebook draws it by itself).

        Args:
            image: the explained PIL image (needed for a pixel map: the map is laid over it).
            **options: for `counterclip.explainers.figure.explanation_figure` (``title``, ``map_title``,
                ``faithfulness``, ``marked``).

        Returns:
            `counterclip.explainers.figure.MapFigure`: titled tiles, colour bars with their meaning and
            range, flags in words; ``.render()`` is a PIL image, ``.save(path)`` a PNG.

        Examples::

            exp = explain(model, image, "a red circle")
            exp.show(image)          # in a notebook: the figure
            exp.show(image).render() # a PIL image
        """
        from counterclip.explainers.figure import explanation_figure

        return explanation_figure(self, image, **options)

    def save(self, path: Any, image: Any = None, **options: Any) -> Any:
        """Write `show` (the labelled figure) as a PNG file and return its path."""
        return self.show(image, **options).save(path)

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
