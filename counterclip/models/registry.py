"""Model backends, keyed by spec scheme: `register_backend(name, loader)`; `load_model` looks them up.

A backend is a loader ``(ModelSpec, torch.device) -> ClipModel``. Given as ``"module:attribute"`` it is
imported on first use, so parsing a spec or listing backends never imports open_clip or transformers. A
spec string ``NAME:REST`` selects backend ``NAME`` (``hf:openai/clip-vit-base-patch32``,
``bundled:shapes``); open_clip owns the forms without a scheme (``ARCH``, ``ARCH:TAG``, ``ARCH:PATH``, see
`counterclip.models.spec`). A new model family is one backend module plus one `register_backend` call.

Examples::

    register_backend("siglip", "my_package.siglip_backend:SiglipModel", example="siglip:ViT-B-16")
    model = load_model("siglip:ViT-B-16")
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from counterclip.errors import ModelLoadError

# ``(spec: ModelSpec, device: torch.device) -> ClipModel``. Typed loosely on purpose: the registry sits
# below `counterclip.models.spec` (which checks a spec's backend here) and `counterclip.models.base`, so it
# names neither, not even for type checkers, and the three modules form no import circle.
Loader = Callable[[Any, Any], Any]
OFFLINE_HINT = "offline? pass a local checkpoint (ARCH:/path/to/weights.safetensors) or use `bundled:shapes`"


@dataclass(frozen=True)
class Backend:
    """One registered backend.

    Attributes:
        name: the spec scheme and `ModelSpec.backend` value.
        loader: ``(spec, device) -> ClipModel``, or ``"module:attribute"`` naming it (imported on first use).
        source: where a spec's weights come from, given the text after the scheme (``ModelSpec.source``).
        example: a spec string shown when the text after the scheme is missing.
        prefixed: whether ``NAME:REST`` strings select this backend (open_clip takes the bare forms instead).
    """

    name: str
    loader: Loader | str
    source: Callable[[str], str | None] | None = None
    example: str | None = None
    prefixed: bool = True

    def load(self, spec: Any, device: Any) -> Any:
        """Run the loader on a `ModelSpec` and a ``torch.device`` (importing it first when it is given by
        name); -> the `ClipModel` it returns."""
        loader: Any = self.loader
        if isinstance(loader, str):
            module, _, attribute = loader.partition(":")
            loader = getattr(importlib.import_module(module), attribute)
        return loader(spec, device)


_BACKENDS: dict[str, Backend] = {}


def register_backend(
    name: str,
    loader: Loader | str,
    *,
    source: Callable[[str], str | None] | None = None,
    example: str | None = None,
    prefixed: bool = True,
) -> Backend:
    """Register a backend under ``name`` (its spec scheme); registering a taken name is an error.

    Args:
        name: scheme and backend name (letters, digits, ``_`` and ``-``).
        loader: ``(spec, device) -> ClipModel`` or ``"module:attribute"``.
        source: optional ``rest -> source`` for `ModelSpec.source` (e.g. ``local`` or ``hub``).
        example: a spec string for error messages.
        prefixed: False only for a backend that owns the bare spec forms (open_clip).

    Returns:
        The `Backend` record.
    """
    if not name or not all(c.isalnum() or c in "_-" for c in name):
        raise ValueError(f"backend name must be letters, digits, '_' or '-', got {name!r}")
    if name in _BACKENDS:
        raise ValueError(f"a model backend named {name!r} is already registered")
    backend = Backend(name, loader, source, example, prefixed)
    _BACKENDS[name] = backend
    return backend


def unregister_backend(name: str) -> None:
    """Remove a registered backend (tests and plug-ins that replace one)."""
    _BACKENDS.pop(name, None)


def backend_names() -> tuple[str, ...]:
    """Registered backend names, in registration order."""
    return tuple(_BACKENDS)


def get_backend(name: str) -> Backend:
    """The backend called ``name``; an unknown name is a `ModelLoadError` listing the known ones."""
    if name not in _BACKENDS:
        raise ModelLoadError(f"unknown model backend {name!r}; expected one of {', '.join(_BACKENDS)}")
    return _BACKENDS[name]


def _hf_source(rest: str) -> str:
    return "local" if Path(rest).expanduser().is_dir() else "hub"


# The built-in backends. A new family: its module, and one line here.
register_backend("open_clip", "counterclip.models.open_clip_backend:OpenClipModel", prefixed=False)
register_backend(  # CLIP, SigLIP, BLIP: the family is read from config.json's model_type
    "hf",
    "counterclip.models.hf_backend:load_hf",
    source=_hf_source,
    example="hf:openai/clip-vit-base-patch32",
)
register_backend(
    "bundled",
    "counterclip.models.factory:load_bundled",
    source=lambda rest: "bundled",
    example="bundled:shapes",
)
register_backend(
    "slip",
    "counterclip.models.slip_backend:SlipModel",
    source=lambda rest: "local",
    example="slip:/path/to/slip_base_100ep.pt",
)
