"""The index directory's layout and its table of contents, ``manifest.json``: one owner for both.

The builder writes a `Manifest`; every reader (`Index`, the CLI, the server) reads one through
`Manifest.read`. Nothing else parses ``manifest.json`` or spells a file name of the layout.

The manifest is written last and atomically. Its presence is what makes an index valid: a build
removes it before changing anything and writes it again only when every other file is complete, so an
interrupted build is never opened as valid. Its ``generation`` must equal the one in ``items.sqlite``,
which catches files mixed from two builds. It imports no FAISS: the CLI reads it to learn which model
to load.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from counterclip._fileio import atomic_write, remove_durably
from counterclip.errors import IndexFormatError, ModelLoadError
from counterclip.models.spec import ModelSpec

# --- the directory layout ---------------------------------------------------------------------------
MANIFEST_NAME = "manifest.json"  # this file
DB_NAME = "items.sqlite"  # one row per image and caption
EMBEDDINGS_DIR = "embeddings"  # raw vector shards, the source of truth
FAISS_FILES = {"images": "images.faiss", "captions": "captions.faiss"}  # derived search indexes
LOCK_NAME = ".lock"  # the writer lock
KINDS = ("images", "captions")  # the two collections of an index

FORMAT = "counterclip-index"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelRecord:
    """The model that built the index: its spec, a fingerprint of its weights, its embedding width."""

    spec: ModelSpec  # load_model(spec) reloads it
    fingerprint: str  # weights fingerprint (`ClipModel.fingerprint`)
    embed_dim: int  # embedding width d
    score: dict[str, Any] | None = None  # the model's `PairScore.to_dict()`: scores without loading it

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``spec_string`` is for people; ``spec`` is what is read back)."""
        return {
            "spec": self.spec.to_dict(),
            "spec_string": str(self.spec),
            "fingerprint": self.fingerprint,
            "embed_dim": self.embed_dim,
            "score": self.score,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelRecord:
        """Inverse of `to_dict`."""
        return cls(
            ModelSpec.from_dict(data["spec"]),
            str(data["fingerprint"]),
            int(data["embed_dim"]),
            data.get("score"),
        )


@dataclass(frozen=True)
class Settings:
    """How the index was built; an update without arguments keeps them."""

    captions_file: str | None = None  # CSV / JSONL captions file, absolute
    vocab_file: str | None = None  # free captions, one per line, absolute
    index_kind: str = "auto"  # FAISS kind asked for ("auto" or a factory string)
    config: dict[str, Any] = field(default_factory=dict)  # the IndexCfg recipe, as a dict
    decode: dict[str, Any] = field(default_factory=dict)  # DecodeOptions fixed at creation


@dataclass(frozen=True)
class Manifest:
    """``manifest.json``, typed.

    ``faiss`` maps each collection (``images``, ``captions``) to its FAISS description (kind, factory,
    search parameters, measured recall: `faiss_index.FaissInfo.to_dict`); ``counts`` holds item and shard
    counts; ``last_run`` what the last build or update did.
    """

    generation: int  # bumped by every build/update; equals items.sqlite's
    created: str  # ISO time of the first build
    updated: str  # ISO time of the last build or update
    root: str  # the image folder, absolute
    model: ModelRecord
    counts: dict[str, int] = field(default_factory=dict)
    faiss: dict[str, dict[str, Any]] = field(default_factory=dict)
    settings: Settings = field(default_factory=Settings)
    last_run: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None  # `counterclip.calibration.Calibration.to_dict()`, if any

    # --- writing ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON document (with the format marker)."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "generation": self.generation,
            "created": self.created,
            "updated": self.updated,
            "root": self.root,
            "model": self.model.to_dict(),
            "counts": dict(self.counts),
            "faiss": dict(self.faiss),
            "settings": dataclasses.asdict(self.settings),
            "last_run": dict(self.last_run),
            "calibration": self.calibration,
        }

    def write(self, index_dir: Path) -> None:
        """Write ``manifest.json`` atomically (temp file, fsync, rename)."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        atomic_write(Path(index_dir) / MANIFEST_NAME, text)

    # --- reading ------------------------------------------------------------------------------------
    @classmethod
    def read(cls, index_dir: str | Path) -> Manifest:
        """Parse and check ``INDEX/manifest.json``.

        Raises:
            IndexFormatError: missing (an interrupted or running build), unreadable, of another format or
                version, or with missing or malformed fields; the message names the index and the fix.
        """
        index_dir = Path(index_dir)
        path = index_dir / MANIFEST_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise IndexFormatError(
                f"index {index_dir} is incomplete (no manifest.json: a build was interrupted or is running); "
                f"run `counterclip update {index_dir}` to finish it"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IndexFormatError(f"index {index_dir}: manifest.json is unreadable ({exc})") from None
        return cls.from_dict(data, index_dir)

    @classmethod
    def from_dict(cls, data: Any, index_dir: Path | str = "index") -> Manifest:
        """Check and type a parsed manifest (see `read`)."""
        fmt = data.get("format") if isinstance(data, dict) else None
        if fmt != FORMAT:
            raise IndexFormatError(f"{index_dir} is not a counterclip index (manifest format {fmt!r})")
        if data.get("format_version") != FORMAT_VERSION:
            raise IndexFormatError(
                f"index {index_dir} has format version {data.get('format_version')}, this counterclip reads "
                f"version {FORMAT_VERSION}; rebuild it with `counterclip build`"
            )
        try:
            settings = dict(data.get("settings") or {})
            unknown = set(settings) - {f.name for f in dataclasses.fields(Settings)}
            if unknown:
                raise ValueError(f"unknown settings {sorted(unknown)}")
            return cls(
                generation=int(data["generation"]),
                created=str(data["created"]),
                updated=str(data["updated"]),
                root=str(data["root"]),
                model=ModelRecord.from_dict(data["model"]),
                counts={k: int(v) for k, v in (data.get("counts") or {}).items()},
                faiss={k: dict(v) for k, v in (data.get("faiss") or {}).items()},
                settings=Settings(**settings),
                last_run=dict(data.get("last_run") or {}),
                calibration=data.get("calibration"),
            )
        except (KeyError, TypeError, ValueError, ModelLoadError) as exc:
            detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise IndexFormatError(
                f"index {index_dir}: manifest.json is damaged ({detail}); run `counterclip update {index_dir}`"
            ) from None


def invalidate_manifest(index_dir: Path) -> None:
    """Remove the manifest (durably) before the first change of a build."""
    remove_durably(Path(index_dir) / MANIFEST_NAME)
