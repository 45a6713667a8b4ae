"""counterclip: explain CLIP-style models with verified counterfactuals retrieved from a vector index.

The public façade::

    import counterclip

    counterclip.build_index("photos/", "photos.idx", model="bundled:shapes")
    engine = counterclip.Engine.open("photos.idx")
    result = engine.counterfactuals(image="photos/cat.jpg", text="a photo of a dog")
"""

from counterclip._version import __version__
from counterclip.engine import Engine, EngineOptions
from counterclip.errors import CounterclipError
from counterclip.index_builder import Index, build_index, update_index
from counterclip.models import ClipModel, ModelSpec, load_model

__all__ = [
    "ClipModel",
    "CounterclipError",
    "Engine",
    "EngineOptions",
    "Index",
    "ModelSpec",
    "__version__",
    "build_index",
    "load_model",
    "update_index",
]
