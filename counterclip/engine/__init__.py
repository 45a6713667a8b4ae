"""The counterfactual engine: verified counterfactuals and plain search over an index.

The names are imported on first use (PEP 562): a text search opened without a torch model (see
`counterclip.models.onnx_text`) imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from counterclip._lazy import lazy_exports

# public name -> the module that defines it
_LAZY: dict[str, str] = {
    "MODES": "counterclip.engine.criteria",
    "SIDES": "counterclip.engine.sides",
    "CaptionSide": "counterclip.engine.sides",
    "CounterfactualResult": "counterclip.engine.results",
    "Criterion": "counterclip.engine.criteria",
    "Decrease": "counterclip.engine.criteria",
    "Engine": "counterclip.engine.engine",
    "EngineOptions": "counterclip.engine.options",
    "Flip": "counterclip.engine.criteria",
    "ImageSide": "counterclip.engine.sides",
    "Increase": "counterclip.engine.criteria",
    "IndexLike": "counterclip.engine.resources",
    "PathSettings": "counterclip.engine.path",
    "QueryImage": "counterclip.engine.request",
    "ResultItem": "counterclip.engine.results",
    "SearchHit": "counterclip.engine.results",
    "SearchResult": "counterclip.engine.results",
    "Side": "counterclip.engine.sides",
    "Validity": "counterclip.engine.results",
    "VectorHits": "counterclip.engine.search",
    "apply_edit": "counterclip.engine.path",
    "gradient_path": "counterclip.engine.path",
    "load_image": "counterclip.engine.request",
    "mmr_order": "counterclip.engine.ranking",
}

__all__ = [
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
    "MODES",
    "PathSettings",
    "QueryImage",
    "ResultItem",
    "SIDES",
    "SearchHit",
    "SearchResult",
    "Side",
    "Validity",
    "VectorHits",
    "apply_edit",
    "gradient_path",
    "load_image",
    "mmr_order",
]

if TYPE_CHECKING:  # static analysers and IDEs see the real imports
    from counterclip.engine.criteria import MODES, Criterion, Decrease, Flip, Increase
    from counterclip.engine.engine import Engine
    from counterclip.engine.options import EngineOptions
    from counterclip.engine.path import PathSettings, apply_edit, gradient_path
    from counterclip.engine.ranking import mmr_order
    from counterclip.engine.request import QueryImage, load_image
    from counterclip.engine.resources import IndexLike
    from counterclip.engine.results import CounterfactualResult, ResultItem, SearchHit, SearchResult, Validity
    from counterclip.engine.search import VectorHits
    from counterclip.engine.sides import SIDES, CaptionSide, ImageSide, Side


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
