"""The side directory of an index that reads a vector store: ``store.json`` (the one owner of its format)
and ``store-sample.npy``.

``store.json`` says which store holds the vectors and how to read them: the address of each collection,
the field names, the model (spec, fingerprint, width), the image root and decode settings, the counts
and a sample of ids at the last build or attach (with their vectors in ``store-sample.npy``, for
`drift`), the tuned ANN settings and their measured recall, how far the store's vectors sit from fresh
encodes (attach), and the calibration. It is written last and atomically: a build or attach that stops
earlier leaves the directory as it was.

A built index keeps its FAISS generation beside it (``build --store``: the build's record, so ``update``
and ``check`` work); an attached one holds these two files only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from counterclip._fileio import atomic_write
from counterclip.errors import IndexFormatError
from counterclip.index_builder.manifest import ModelRecord

SIDE_NAME = "store.json"
SAMPLE_NAME = "store-sample.npy"
FORMAT = "counterclip-store"
VERSION = 1
KINDS = ("built", "attached")


@dataclass(frozen=True)
class Fields:
    """Where an item's parts live in the store."""

    vector: str = "vector"  # the vectors
    path: str = "path"  # the image file (absolute, relative to the root, or a URL)
    caption: str | None = "captions"  # the image's own caption(s) (text or list of texts), if any
    id: str = "id"  # LanceDB: the id column (Qdrant points have their own)


@dataclass(frozen=True)
class SideManifest:
    """``store.json`` (see the module docstring)."""

    kind: str  # "built" (counterclip filled the store) or "attached" (an app's collection)
    stores: dict[str, str | None]  # "images" / "captions" -> store address (None: no captions)
    fields: Fields
    model: ModelRecord
    root: str | None  # relative payload paths are relative to this directory
    decode: dict[str, Any] = field(default_factory=dict)  # the build's decode options (attach: defaults)
    counts: dict[str, int] = field(default_factory=dict)  # items per collection when written
    sample_ids: list[int] = field(default_factory=list)  # image ids whose vectors store-sample.npy holds
    ann: dict[str, Any] = field(default_factory=dict)  # collection -> kind, search params, measured recall
    agreement: dict[str, Any] | None = None  # attach: stored vs fresh cosines on a sample (`agreement`)
    calibration: dict[str, Any] | None = None  # `Calibration.to_dict()`, or None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["model"] = self.model.to_dict()
        return {"format": FORMAT, "version": VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: Path) -> SideManifest:
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise IndexFormatError(f"{where} is not a counterclip store manifest (format {FORMAT} {VERSION})")
        try:
            return cls(
                kind=data["kind"],
                stores=dict(data["stores"]),
                fields=Fields(**data["fields"]),
                model=ModelRecord.from_dict(data["model"]),
                root=data.get("root"),
                decode=dict(data.get("decode") or {}),
                counts={k: int(v) for k, v in (data.get("counts") or {}).items()},
                sample_ids=[int(i) for i in data.get("sample_ids") or []],
                ann=dict(data.get("ann") or {}),
                agreement=data.get("agreement"),
                calibration=data.get("calibration"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFormatError(f"{where}: damaged store manifest ({exc})") from None


def is_store_index(index_dir: str | Path) -> bool:
    """Whether the directory reads its vectors from a store (it holds ``store.json``)."""
    return (Path(index_dir).expanduser() / SIDE_NAME).is_file()


def read_side(index_dir: str | Path) -> SideManifest:
    """The side manifest of ``index_dir``; `IndexFormatError` when there is none or it is damaged."""
    path = Path(index_dir).expanduser() / SIDE_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexFormatError(f"{path.parent} reads no vector store (no {SIDE_NAME})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexFormatError(f"{path}: damaged store manifest ({exc})") from None
    return SideManifest.from_dict(data, path)


def read_sample(index_dir: str | Path) -> np.ndarray:
    """``(n, d)`` float32: the vectors of `SideManifest.sample_ids` when it was written."""
    return np.load(Path(index_dir).expanduser() / SAMPLE_NAME, allow_pickle=False)


def write_side(index_dir: str | Path, side: SideManifest, sample: np.ndarray) -> None:
    """Write the sample, then ``store.json`` (atomically, last)."""
    directory = Path(index_dir).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    assert len(sample) == len(side.sample_ids), (sample.shape, len(side.sample_ids))
    vectors = np.ascontiguousarray(sample, dtype=np.float32)
    atomic_write(directory / SAMPLE_NAME, lambda handle: np.save(handle, vectors, allow_pickle=False))
    atomic_write(directory / SIDE_NAME, json.dumps(side.to_dict(), indent=2, sort_keys=True) + "\n")
