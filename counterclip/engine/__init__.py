"""The counterfactual engine: verified counterfactuals and plain search over an index."""

from counterclip.engine.criteria import MODES, Criterion, Decrease, Flip, Increase
from counterclip.engine.engine import Engine, EngineOptions, IndexLike, QueryImage, load_image
from counterclip.engine.path import PathSettings, apply_edit, gradient_path
from counterclip.engine.ranking import mmr_order
from counterclip.engine.results import CounterfactualResult, ResultItem, SearchResult, Validity
from counterclip.engine.sides import SIDES, CaptionSide, ImageSide, Side

__all__ = [
    "MODES",
    "SIDES",
    "CaptionSide",
    "CounterfactualResult",
    "Criterion",
    "Decrease",
    "Engine",
    "EngineOptions",
    "Flip",
    "ImageSide",
    "Increase",
    "IndexLike",
    "PathSettings",
    "QueryImage",
    "ResultItem",
    "SearchResult",
    "Side",
    "Validity",
    "apply_edit",
    "gradient_path",
    "load_image",
    "mmr_order",
]
