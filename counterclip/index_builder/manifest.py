"""The index directory's layout and its table of contents, the manifest: one owner for both.

The builder writes a `Manifest`; every reader (`Index`, the CLI, the server) reads one through this
module. Nothing else parses a manifest or spells a file name of the layout.

An index is a sequence of **generations**. Generation G is the file ``manifest-G.json`` and the files it
lists, each with its size and checksum: ``items-G.sqlite`` (the rows), ``images-F.faiss`` and
``captions-F.faiss`` (F <= G: an unchanged FAISS file is shared by later generations), and the
embedding shards ``embeddings/{kind}-NNNNN.npy`` (immutable, numbered once, shared while live). No file
of a generation changes after it is published. ``manifest.json`` is a copy of the current generation's
manifest: an update writes every file of G+1 beside G, then ``manifest-(G+1).json``, and switches by
renaming ``manifest.json`` over (atomic), so a reader sees G or G+1, never a mix, and an interrupted or
refused update leaves G readable. Readers hold a shared lock on their generation's manifest file;
files leave only when no generation that lists them is current or held (`generations.collect_garbage`).

Each manifest carries a checksum of its own content, so a damaged manifest is an error naming it.
It imports no FAISS: the CLI reads it to learn which model to load.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from counterclip._fileio import atomic_write
from counterclip.errors import AccessDeniedError, IndexDamagedError, IndexFormatError, ModelLoadError
from counterclip.index_builder.checksums import Checksum
from counterclip.models.spec import ModelSpec

# --- the directory layout ---------------------------------------------------------------------------
MANIFEST_NAME = "manifest.json"  # the current generation's manifest (the switch: renamed over)
EMBEDDINGS_DIR = "embeddings"  # raw vector shards, the source of truth
LOCK_NAME = ".lock"  # the writer lock
GC_LOCK_NAME = ".gc.lock"  # taken while old generations' files are removed
KINDS = ("images", "captions")  # the two collections of an index
LEGACY_FILES = ("items.sqlite", "images.faiss", "captions.faiss")  # format 1 (before generations)
LEGACY_DB_NAME = LEGACY_FILES[0]

FORMAT = "counterclip-index"
FORMAT_VERSION = 2

_GENERATION_FILE = re.compile(r"^(manifest|items|images|captions)-(\d{6,})\.(json|sqlite|faiss)$")


def manifest_name(generation: int) -> str:
    """``manifest-000042.json``: generation 42's manifest (readers lock it while they use 42)."""
    return f"manifest-{generation:06d}.json"


def db_name(generation: int) -> str:
    """``items-000042.sqlite``: generation 42's rows (written while 42 is built, immutable after)."""
    return f"items-{generation:06d}.sqlite"


def faiss_name(kind: str, generation: int) -> str:
    """``images-000042.faiss``: a FAISS file written by generation 42 (later ones may share it)."""
    assert kind in KINDS
    return f"{kind}-{generation:06d}.faiss"


def parse_generation_file(name: str) -> tuple[str, int] | None:
    """``("manifest" | "items" | "images" | "captions", generation)`` of a generation file name, else None."""
    match = _GENERATION_FILE.match(name)
    return (match.group(1), int(match.group(2))) if match else None


def manifest_generations(index_dir: Path) -> list[int]:
    """Generations that have a manifest file in ``index_dir``, ascending."""
    found = []
    try:
        names = [p.name for p in Path(index_dir).iterdir()]
    except FileNotFoundError:
        return []
    for name in names:
        parsed = parse_generation_file(name)
        if parsed and parsed[0] == "manifest":
            found.append(parsed[1])
    return sorted(found)


def repair_hint(index_dir: Path | str) -> str:
    """The fix printed with every damaged-file error."""
    return f"run `counterclip update {index_dir} --repair`"


def damaged_error(index_dir: Path | str, name: str, reason: str) -> IndexDamagedError:
    """The one-line error for a damaged file ``name`` (relative to ``index_dir``)."""
    what = f"{name} is missing" if reason == "missing" else f"{name} is damaged ({reason})"
    return IndexDamagedError(f"index {index_dir}: {what}; {repair_hint(index_dir)}", file=name, reason=reason)


@dataclass(frozen=True)
class ModelRecord:
    """The model that built the index: its spec, a fingerprint of its weights, its embedding width."""

    spec: ModelSpec  # load_model(spec) reloads it
    fingerprint: str  # weights fingerprint (`ClipModel.fingerprint`)
    embed_dim: int  # embedding width d
    score: dict[str, Any] | None = None  # the model's `PairScore.to_dict()`: scores without loading it
    # what embedded the vectors (`counterclip.models.onnx_common.runtime_record`): runtime, precision,
    # version, measured cosines; None in an index that predates it (torch)
    runtime: dict[str, Any] | None = None

    @property
    def runtime_name(self) -> str:
        """``torch`` or ``onnx``: the runtime that embedded the vectors (old indexes: torch)."""
        return str((self.runtime or {}).get("runtime", "torch"))

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``spec_string`` is for people; ``spec`` is what is read back)."""
        return {
            "spec": self.spec.to_dict(),
            "spec_string": str(self.spec),
            "fingerprint": self.fingerprint,
            "embed_dim": self.embed_dim,
            "score": self.score,
            **({"runtime": self.runtime} if self.runtime is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelRecord:
        """Inverse of `to_dict`."""
        return cls(
            ModelSpec.from_dict(data["spec"]),
            str(data["fingerprint"]),
            int(data["embed_dim"]),
            data.get("score"),
            data.get("runtime") if isinstance(data.get("runtime"), dict) else None,
        )


@dataclass(frozen=True)
class Settings:
    """How the index was built; an update without arguments keeps them."""

    captions_file: str | None = None  # CSV / JSONL captions file, absolute
    vocab_file: str | None = None  # free captions, one per line, absolute
    index_kind: str = "auto"  # FAISS kind asked for ("auto" or a factory string)
    config: dict[str, Any] = field(default_factory=dict)  # the IndexCfg recipe, as a dict
    decode: dict[str, Any] = field(default_factory=dict)  # DecodeOptions fixed at creation
    decode_check: dict[str, Any] | None = None  # the fast decode measured at creation (`parity`), if used


@dataclass(frozen=True)
class Manifest:
    """A generation's manifest, typed.

    ``faiss`` maps each collection (``images``, ``captions``) to its FAISS description (the file, kind,
    factory, search parameters, measured recall: `faiss_index.FaissInfo.to_dict` plus ``file``);
    ``files`` maps every data file of the generation (relative to the index directory) to its size and
    checksum; ``counts`` holds item and shard counts; ``last_run`` what the last build or update did.
    """

    generation: int  # 1 for the first build, +1 per update; equals items-G.sqlite's
    created: str  # ISO time of the first build
    updated: str  # ISO time of the last build or update
    root: str  # the image folder, absolute
    model: ModelRecord
    counts: dict[str, int] = field(default_factory=dict)
    faiss: dict[str, dict[str, Any]] = field(default_factory=dict)
    settings: Settings = field(default_factory=Settings)
    last_run: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None  # `counterclip.calibration.Calibration.to_dict()`, if any
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {"size", "xxh3"}

    # --- layout of this generation ------------------------------------------------------------------
    @property
    def db_file(self) -> str:
        """The SQLite file of this generation."""
        return db_name(self.generation)

    def faiss_file(self, kind: str) -> str:
        """The FAISS file this generation searches for ``kind``."""
        return str(self.faiss[kind]["file"])

    def checksum(self, name: str) -> Checksum:
        """The recorded size and checksum of a file of this generation."""
        return Checksum.from_dict(self.files[name])

    # --- writing ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON document (with the format marker and the checksum of the rest)."""
        body = {
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
            "files": dict(self.files),
        }
        return {**body, "checksum": _self_checksum(body)}

    def text(self) -> str:
        """The file content."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def write(self, index_dir: Path) -> None:
        """Publish this generation: write ``manifest-G.json``, then switch ``manifest.json`` to it (both
        atomic: temp file, fsync, rename)."""
        text = self.text()
        atomic_write(Path(index_dir) / manifest_name(self.generation), text)
        atomic_write(Path(index_dir) / MANIFEST_NAME, text)

    # --- reading ------------------------------------------------------------------------------------
    @classmethod
    def read(cls, index_dir: str | Path) -> Manifest:
        """Parse and check ``INDEX/manifest.json`` (the current generation).

        Raises:
            IndexFormatError: missing (an interrupted or running first build), of another format or version.
            IndexDamagedError: unreadable bytes, a checksum that does not match, missing or malformed fields;
                the message names the file and the fix.
            AccessDeniedError: no permission to read it.
        """
        index_dir = Path(index_dir)
        path = index_dir / MANIFEST_NAME
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            if manifest_generations(index_dir):
                raise damaged_error(index_dir, MANIFEST_NAME, "missing") from None
            raise IndexFormatError(
                f"index {index_dir} is incomplete (no manifest.json: a build was interrupted or is running); "
                f"run `counterclip update {index_dir}` to finish it"
            ) from None
        except PermissionError:
            raise AccessDeniedError(f"index {index_dir}: permission denied reading {path}") from None
        except OSError as exc:
            raise damaged_error(index_dir, MANIFEST_NAME, f"unreadable: {exc.strerror or exc}") from None
        return cls.parse(data, index_dir, MANIFEST_NAME)

    @classmethod
    def parse(cls, data: bytes, index_dir: Path | str, name: str = MANIFEST_NAME) -> Manifest:
        """Check and type the bytes of a manifest file called ``name`` (see `read`)."""
        try:
            parsed = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise damaged_error(index_dir, name, f"not valid JSON: {str(exc)[:80]}") from None
        return cls.from_dict(parsed, index_dir, name)

    @classmethod
    def from_dict(cls, data: Any, index_dir: Path | str = "index", name: str = MANIFEST_NAME) -> Manifest:
        """Check and type a parsed manifest (see `read`)."""
        fmt = data.get("format") if isinstance(data, dict) else None
        if fmt != FORMAT:
            if isinstance(data, dict) and "checksum" in data:  # ours, with the marker garbled
                raise damaged_error(index_dir, name, f"format marker {fmt!r}")
            raise IndexFormatError(f"{index_dir} is not a counterclip index (manifest format {fmt!r})")
        version = data.get("format_version")
        if version == 1:
            raise IndexFormatError(
                f"index {index_dir} was written by an older counterclip (format 1, before generations); "
                f"run `counterclip update {index_dir}` to convert it"
            )
        if version != FORMAT_VERSION:
            raise IndexFormatError(
                f"index {index_dir} has format version {version}, this counterclip reads "
                f"version {FORMAT_VERSION}; rebuild it with `counterclip build`"
            )
        body = {k: v for k, v in data.items() if k != "checksum"}
        if data.get("checksum") != _self_checksum(body):
            raise damaged_error(index_dir, name, "its checksum does not match its content")
        try:
            settings = dict(data.get("settings") or {})
            unknown = set(settings) - {f.name for f in dataclasses.fields(Settings)}
            if unknown:
                raise ValueError(f"unknown settings {sorted(unknown)}")
            manifest = cls(
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
                files={str(k): dict(v) for k, v in (data.get("files") or {}).items()},
            )
            for kind in KINDS:
                if manifest.faiss_file(kind) not in manifest.files:
                    raise ValueError(f"{kind} FAISS file not listed")
            if manifest.db_file not in manifest.files:
                raise ValueError("SQLite file not listed")
            for entry in manifest.files.values():
                Checksum.from_dict(entry)
        except (KeyError, TypeError, ValueError, ModelLoadError) as exc:
            detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise damaged_error(index_dir, name, detail) from None
        return manifest


def _self_checksum(body: dict[str, Any]) -> str:
    return xxhash.xxh3_128_hexdigest(json.dumps(body, sort_keys=True).encode("utf-8"))


def read_generation(index_dir: Path, generation: int) -> Manifest:
    """Parse ``manifest-G.json`` (see `Manifest.read` for the errors); FileNotFoundError when absent."""
    name = manifest_name(generation)
    data = (Path(index_dir) / name).read_bytes()
    manifest = Manifest.parse(data, index_dir, name)
    if manifest.generation != generation:
        raise damaged_error(index_dir, name, f"it describes generation {manifest.generation}")
    return manifest
