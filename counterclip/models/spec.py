"""Model specs: what the CLI's ``--model`` takes, parsed once, written to JSON and read back.

Grammar (one shared parser, used by the CLI, the index manifest and the Python API):

- ``SCHEME:REST``               a registered backend (`counterclip.models.registry`), among them:
- ``bundled:NAME``              a model shipped inside the package (``bundled:shapes``)
- ``hf:ID_OR_DIR``              a Hugging Face ``CLIPModel`` from the hub or a local directory
- ``local-dir:PATH``            a local directory: Hugging Face (``config.json``) or open_clip
                                (``open_clip_config.json`` + weights)
- ``hf-hub:ORG/REPO``           an open_clip model published on the Hugging Face hub
- ``ARCH``                      an open_clip architecture with random weights (tests, benchmarks)
- ``ARCH:TAG``                  an open_clip architecture with a pretrained tag (``ViT-B-32:laion2b_s34b_b79k``)
- ``ARCH:PATH``                 an open_clip architecture with a local checkpoint file
- ``CONFIG.json[:PATH]``        an architecture given as an open_clip model-config JSON file

Local paths are made absolute when a spec string is parsed (relative to the working directory, where the
user meant them), so an index records where its model's files are and opens from any directory.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from counterclip.errors import ModelLoadError
from counterclip.models.registry import backend_names, get_backend

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


@dataclass(frozen=True)
class ModelSpec:
    """A resolved description of a model; JSON-serialisable so an index can record what built it."""

    backend: str  # a registered backend: "open_clip" | "hf" | "bundled" | ...
    name: str  # architecture name, config-JSON path, hub id, local directory, or bundled name
    pretrained: str | None = None  # open_clip pretrained tag, or local checkpoint path; None = random init
    source: str | None = None  # where weights come from: "hub", "local", "tag", "random", "bundled"

    def __post_init__(self) -> None:
        get_backend(self.backend)  # an unknown backend raises, naming the registered ones

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Inverse of `to_dict`; unknown keys are an error (a manifest from another format)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ModelLoadError(f"model spec has unknown field(s) {sorted(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        """JSON text of the spec."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        """Inverse of `to_json`."""
        return cls.from_dict(json.loads(text))

    def __str__(self) -> str:
        """The spec string that parses back to this spec."""
        if self.backend != "open_clip":
            return f"{self.backend}:{self.name}"
        if self.source == "hub":  # open_clip from the HF hub
            return f"hf-hub:{self.name}"
        return self.name if self.pretrained is None else f"{self.name}:{self.pretrained}"


def absolute_path(text: str) -> str:
    """``text`` as an absolute path when it names an existing file or directory (``~`` expanded), else as
    given (a hub id, an architecture name, or a path whose absence the loader reports)."""
    path = Path(text).expanduser()
    return str(path.absolute()) if path.exists() else text


def local_paths(spec: ModelSpec) -> list[str]:
    """The local files or directories a spec loads from (what must still be there to load it)."""
    if spec.backend == "open_clip":
        named = [spec.name] if spec.name.lower().endswith(".json") or spec.source == "local-dir" else []
        return named + ([spec.pretrained] if spec.source == "local" and spec.pretrained else [])
    return [spec.name] if spec.source == "local" else []


def _looks_like_path(text: str) -> bool:
    return "/" in text or text.startswith(".") or text.lower().endswith(_CHECKPOINT_SUFFIXES)


def parse_model_spec(spec: str | ModelSpec | dict[str, Any]) -> ModelSpec:
    """Parse a ``--model`` string (or pass a spec / dict through) into a `ModelSpec`.

    Args:
        spec: a spec string (see module doc), a `ModelSpec`, or its dict form.

    Returns:
        ModelSpec.

    Examples::

        >>> parse_model_spec("bundled:shapes").backend
        'bundled'
        >>> parse_model_spec("ViT-B-32:laion2b_s34b_b79k").pretrained
        'laion2b_s34b_b79k'
    """
    if isinstance(spec, ModelSpec):
        return spec
    if isinstance(spec, dict):
        return ModelSpec.from_dict(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise ModelLoadError(
            "empty model spec; try `bundled:shapes` or an open_clip name like `ViT-B-32:PATH`"
        )
    text = spec.strip()
    schema, sep, rest = text.partition(":")
    if sep and schema in backend_names() and get_backend(schema).prefixed:
        backend = get_backend(schema)
        if not rest:
            example = f", e.g. {backend.example}" if backend.example else ""
            raise ModelLoadError(f"`{schema}:` needs a name after the colon{example}")
        source = backend.source(rest) if backend.source else None
        return ModelSpec(schema, absolute_path(rest) if source == "local" else rest, source=source)
    if sep and schema == "hf-hub":
        return ModelSpec("open_clip", rest, source="hub")
    if sep and schema == "local-dir":
        directory = Path(rest).expanduser()
        if (directory / "open_clip_config.json").is_file():
            return ModelSpec("open_clip", absolute_path(str(directory)), source="local-dir")
        return ModelSpec("hf", absolute_path(str(directory)), source="local")
    # open_clip: ARCH[:TAG_OR_PATH]; ARCH may itself be a JSON config path.
    arch, sep, weights = text.partition(":")
    arch = absolute_path(arch) if arch.lower().endswith(".json") else arch
    if not sep or not weights:
        return ModelSpec("open_clip", arch, None, source="random")
    if _looks_like_path(weights):
        return ModelSpec("open_clip", arch, absolute_path(weights), source="local")
    return ModelSpec("open_clip", arch, weights, source="tag")
