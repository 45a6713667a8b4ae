"""The counterfactual engine: verified counterfactuals and plain search over an index."""

from counterclip.engine.engine import Engine, EngineOptions, IndexLike, load_image
from counterclip.engine.path import (
    PathSettings,
    apply_edit,
    gradient_path,
    label_objective,
    similarity_objective,
)
from counterclip.engine.ranking import mmr_order
from counterclip.engine.results import CounterfactualResult, ResultItem, SearchResult, Validity

__all__ = [
    "CounterfactualResult",
    "Engine",
    "EngineOptions",
    "IndexLike",
    "PathSettings",
    "ResultItem",
    "SearchResult",
    "Validity",
    "apply_edit",
    "gradient_path",
    "label_objective",
    "load_image",
    "mmr_order",
    "similarity_objective",
]
