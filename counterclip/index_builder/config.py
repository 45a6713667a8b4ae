"""`IndexCfg`: every knob of an index build in one typed, frozen dataclass, loaded from named JSON recipes.

Recipes live in ``index_builder/configs/*.json`` (``default``, ``exact``, ``compact``); a user adds
their own with `add_index_config`. Dicts become an `IndexCfg` only here, at the boundary, and unknown
keys are an error.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from counterclip.errors import InputError

_CONFIG_DIR = Path(str(resources.files("counterclip.index_builder") / "configs"))
_EXTRA_CONFIGS: dict[str, Path] = {}


@dataclass(frozen=True)
class IndexCfg:
    """How an index is built and searched (everything except the model, the folder and the caption files)."""

    name: str = "default"  # recipe name, recorded in the manifest
    shard_size: int = 2048  # vectors per embedding shard file (memory bound and resume granularity)
    batch_size: int = 64  # images per forward pass
    workers: int = 2  # decode/preprocess threads (0 = decode in the main thread)
    prefetch_batches: int = 2  # decoded batches kept ready ahead of the model
    max_pixels: int = 89_478_485  # refuse larger images (decompression bombs); Pillow's own limit
    max_side: int = 50_000  # refuse images with a side longer than this (absurd dimensions)
    max_file_bytes: int = 512 * 1024 * 1024  # refuse files larger than this
    downscale: bool = False  # the fast decode (opt-in, `--fast-decode`): shrink large images before the
    # model's preprocessing (JPEG DCT scaling, box reduce), never below its input side; several times less
    # decoding work, but not the file's pixels: measured against the exact path at build, refused below
    # `parity.FAST_DECODE_MIN_COSINE`. Off: the model sees what its own library would give it.
    exact_max: int = 100_000  # up to this many vectors: exact search (Flat)
    hnsw_max: int = 2_000_000  # up to this many: HNSW; above: IVF with scalar quantisation
    hnsw_m: int = 32  # HNSW graph degree
    hnsw_ef_construction: int = 80  # HNSW build-time beam width
    ivf_codec: str = "SQ8"  # IVF vector codec for the largest collections
    recall_k: int = 10  # recall@k measured against exact search after every build
    recall_sample: int = 1000  # query vectors sampled for that measurement
    recall_target: float = 0.95  # search parameters are raised until this recall@k is reached
    caption_batch_size: int = 256  # captions per text forward pass
    seed: int = 0  # sampling seed (recall queries, IVF training sample)
    memory_budget: int | None = None  # bytes of RAM for the FAISS indexes (budget.py); None: by size

    def __post_init__(self) -> None:
        for key in ("shard_size", "batch_size", "prefetch_batches", "recall_k", "recall_sample"):
            if getattr(self, key) < 1:
                raise InputError(f"index config {self.name!r}: {key} must be >= 1, got {getattr(self, key)}")
        if self.workers < 0:
            raise InputError(f"index config {self.name!r}: workers must be >= 0 (0 = decode inline)")
        if self.memory_budget is not None and self.memory_budget < 1:
            raise InputError(f"index config {self.name!r}: memory_budget must be a positive number of bytes")
        if not 0.0 < self.recall_target <= 1.0:
            raise InputError(f"index config {self.name!r}: recall_target must be in (0, 1]")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for the manifest."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexCfg:
        """Dict -> cfg; unknown keys raise `InputError` (no silently ignored options)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown index config key(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


def _registry() -> dict[str, Path]:
    shipped = {p.stem: p for p in sorted(_CONFIG_DIR.glob("*.json"))}
    return {**shipped, **_EXTRA_CONFIGS}


def list_index_configs() -> list[str]:
    """Names of the known recipes (shipped ones and those added with `add_index_config`)."""
    return sorted(_registry())


def add_index_config(path: str | Path) -> str:
    """Register a recipe JSON file under its stem; returns the name. The file is validated now."""
    path = Path(path).expanduser()
    load_index_config(path)
    _EXTRA_CONFIGS[path.stem] = path
    return path.stem


def load_index_config(name_or_path: str | Path | IndexCfg | None = None, **overrides: Any) -> IndexCfg:
    """Resolve a recipe name, a JSON path or an `IndexCfg` (None = ``default``), then apply overrides.

    Args:
        name_or_path: recipe name (see `list_index_configs`), path to a JSON file, or a cfg. Default: None.
        **overrides: field values replacing the recipe's (None values are ignored).

    Returns:
        IndexCfg.

    Examples::

        >>> load_index_config("default", batch_size=32).batch_size
        32
    """
    if isinstance(name_or_path, IndexCfg):
        cfg = name_or_path
    else:
        key = "default" if name_or_path is None else str(name_or_path)
        path = _registry().get(key)
        if path is None:
            path = Path(key).expanduser()
            if not path.is_file():
                raise InputError(
                    f"unknown index config {key!r}; known: {', '.join(list_index_configs())}, or a JSON file path"
                )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"index config {path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise InputError(f"index config {path} must hold a JSON object")
        data.setdefault("name", path.stem)
        cfg = IndexCfg.from_dict(data)
    changes = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(cfg, **changes) if changes else cfg
