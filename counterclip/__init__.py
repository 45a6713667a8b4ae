"""counterclip: explain CLIP-style models with verified counterfactuals retrieved from a vector index.

The public façade::

    import counterclip

    counterclip.build_index("photos/", "photos.idx", model="bundled:shapes")
    engine = counterclip.Engine.open("photos.idx")
    result = engine.counterfactuals(image="photos/cat.jpg", text="a photo of a dog")

The names below are imported on first use (PEP 562): ``import counterclip`` and ``counterclip --help``
then cost milliseconds instead of the seconds torch, FAISS and open_clip take to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from counterclip._lazy import lazy_exports
from counterclip._version import __version__
from counterclip.errors import CounterclipError

# public name -> the module that defines it
_LAZY: dict[str, str] = {
    "Client": "counterclip.client",
    "ClipModel": "counterclip.models",
    "Engine": "counterclip.engine",
    "EngineOptions": "counterclip.engine",
    "Index": "counterclip.index_builder",
    "ModelSpec": "counterclip.models",
    "build_index": "counterclip.index_builder",
    "load_model": "counterclip.models",
    "update_index": "counterclip.index_builder",
}

__all__ = [
    "Client",
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

if TYPE_CHECKING:  # static analysers and IDEs see the real imports
    from counterclip.client import Client
    from counterclip.engine import Engine, EngineOptions
    from counterclip.index_builder import Index, build_index, update_index
    from counterclip.models import ClipModel, ModelSpec, load_model


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
