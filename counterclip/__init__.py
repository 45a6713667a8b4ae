"""counterclip: explain CLIP-style models with verified counterfactuals retrieved from a vector index.

The public façade: `load_model` now; `build_index`, `Index` and `Engine` as their issues land.
"""

from counterclip._version import __version__
from counterclip.errors import CounterclipError
from counterclip.models import ClipModel, ModelSpec, load_model

__all__ = ["ClipModel", "CounterclipError", "ModelSpec", "__version__", "load_model"]
