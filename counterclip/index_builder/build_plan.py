"""Build stage 2, the plan: every check before changes, and every setting the run then follows.

From the request and the recorded settings (`build_base.MetaView`): the image folder, the model (loaded
now: a checkpoint changed in place is refused here, as is another model than the index's), the recipe
(`IndexCfg`), the caption files, the FAISS kind, the decode options (fixed when the index is created)
and the encoder (`build_encoder`). A refused run has written nothing. The result, `BuildPlan`, is plain
data the later stages read; an import (`interop_import`) makes one too and shares the last stages.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from counterclip.errors import IndexFormatError, InputError
from counterclip.index_builder.build_base import MetaView
from counterclip.index_builder.build_encoder import Encoding, prepare_encoder, runtime_entry
from counterclip.index_builder.build_state import BuildRequest, BuildState, now
from counterclip.index_builder.config import IndexCfg, load_index_config
from counterclip.index_builder.decode import DecodeOptions
from counterclip.index_builder.faiss_index import choose_factory, new_index
from counterclip.index_builder.index_model import load_index_model
from counterclip.index_builder.manifest import FORMAT_VERSION, ModelRecord
from counterclip.index_builder.parity import check_fast_decode
from counterclip.index_builder.sources import refuse_update_of_import
from counterclip.models import ClipModel, ModelSpec, load_model
from counterclip.scores import PairScore

DEFAULT_MODEL = "bundled:shapes"


@dataclass(frozen=True)
class ModelChoice:
    """The model of a run: loaded, and its identity as the index records it."""

    model: ClipModel
    spec: ModelSpec
    fingerprint: str
    dim: int
    score: PairScore | None  # the recorded pair score (None: an index that predates it)

    @property
    def pair_score(self) -> PairScore:
        """The pair score: recorded, else the model's."""
        return self.score if self.score is not None else self.model.pair_score


@dataclass(frozen=True)
class BuildPlan:
    """Everything a run decided before writing anything; the later stages follow it."""

    root: Path  # the image folder (an import: where relative image paths resolve)
    cfg: IndexCfg  # the recipe, with the arguments' overrides
    captions_file: Path | None
    vocab_file: Path | None
    index_kind: str  # "auto" or a FAISS factory string, for the images
    decode: DecodeOptions  # fixed when the index was created
    created: str  # ISO time of the first build
    model: ModelChoice
    encoder: Any  # what embeds images and captions (the model, or an `OnnxEncoder` over it)
    runtime: dict[str, Any] | None  # the runtime record of the manifest (None: an import records none)
    decode_check: dict[str, Any] | None = None  # the fast decode measured against the exact one (parity.py)

    def settings_meta(self) -> dict[str, Any]:
        """The settings the items file records (``meta``): what the next update is checked against."""
        model = self.model
        values = {
            "format_version": FORMAT_VERSION,
            "model_spec": model.spec.to_dict(),
            "fingerprint": model.fingerprint,
            "embed_dim": model.dim,
            "pair_score": model.score.to_dict() if model.score is not None else None,
            "root": str(self.root),
            "captions_file": str(self.captions_file) if self.captions_file else None,
            "vocab_file": str(self.vocab_file) if self.vocab_file else None,
            "index_kind": self.index_kind,
            "config": self.cfg.to_dict(),
            "decode": dataclasses.asdict(self.decode),
            "decode_check": self.decode_check,
            "created": self.created,
        }
        if self.runtime is not None:
            values["runtime"] = self.runtime
        return values


def fresh_decode_options(cfg: IndexCfg, model: Any) -> DecodeOptions:
    """The decode options a new index fixes: the recipe's limits, the model family's own RGB conversion
    (`ClipModel.rgb_conversion`), and with ``downscale`` (the opt-in fast decode) JPEG scaling to the
    model's input side (none for a stand-in without a vision geometry)."""
    geometry = getattr(model, "vision_geometry", None)
    side = min(geometry.image_size) if geometry is not None and cfg.downscale else None
    rgb = getattr(model, "rgb_conversion", "pillow")
    return DecodeOptions(cfg.max_pixels, cfg.max_side, cfg.max_file_bytes, side, rgb)


def load_model_first(request: BuildRequest) -> tuple[ClipModel, Encoding | None, dict[str, Any] | None]:
    """A new index: load the model (and make its encoder ready) before the directory exists, so a model
    that cannot be loaded (no network, no GPU, a bad checkpoint, an int8 tower refused) or a fast decode
    refused leaves no half-made index behind; -> the model, its encoder, the fast decode's measure."""
    model = request.model
    if not isinstance(model, ClipModel):
        model = load_model(DEFAULT_MODEL if model is None else model, device=request.device)
    if request.root is None:
        return model, None, None
    cfg = load_index_config(request.config, **request.overrides)
    decode = fresh_decode_options(cfg, model)
    checked = check_fast_decode(model, request.root, decode, request.index_dir) if decode.min_side else None
    sample_from = (request.root, decode, request.index_dir)
    return model, prepare_encoder(model, {}, request.runtime, request.precision, sample_from, cfg), checked


def plan_run(
    state: BuildState, request: BuildRequest, meta: MetaView, encoding: Encoding | None
) -> BuildPlan:
    """Check the request against the recorded settings and decide the run's (nothing is written).

    ``encoding``: an encoder made ready already (`load_model_first`), else one is made here.
    """
    refuse_update_of_import(state.index_dir, meta.get_meta("imported_from"))  # interop_import.py
    root = _resolve_root(state.index_dir, request.root, meta)
    model = _resolve_model(state.index_dir, request, meta)
    state.dim = model.dim
    recorded_cfg = meta.get_meta("config")
    if request.config is None and recorded_cfg is not None:
        cfg = IndexCfg.from_dict(recorded_cfg)
    else:
        cfg = load_index_config(request.config)
    cfg = load_index_config(cfg, **request.overrides)
    captions_file = _caption_file(state, meta, "captions_file", request.captions)
    vocab_file = _caption_file(state, meta, "vocab_file", request.vocab)
    index_kind = request.index_kind or meta.get_meta("index_kind") or "auto"
    if index_kind != "auto":  # a FAISS factory string that cannot work is refused now
        _, factory = choose_factory(0, model.dim, cfg, index_kind)
        new_index(model.dim, factory)
    decode = _decode_options(state, meta, cfg, model.model)
    recorded_runtime = meta.get_meta("runtime")
    if encoding is None:
        sample_from = (root, decode, state.index_dir)
        encoding = prepare_encoder(
            model.model, recorded_runtime or {}, request.runtime, request.precision, sample_from, cfg
        )
    created = meta.get_meta("created") or now()
    runtime = runtime_entry(encoding.record, recorded_runtime, state.base_gen > 0)
    decode_check = _decode_check(state, request, meta, decode, model.model, root)
    return BuildPlan(
        root, cfg, captions_file, vocab_file, index_kind, decode, created, model, encoding.encoder, runtime,
        decode_check,
    )  # fmt: skip


def _decode_check(
    state: BuildState, request: BuildRequest, meta: MetaView, decode: DecodeOptions, model: Any, root: Path
) -> dict[str, Any] | None:
    """The fast decode's measure: made before the index was created, recorded, or (a first build that
    stopped before recording its decode) made now; None for the exact decode."""
    if not decode.min_side:
        return None
    if request.decode_check or meta.get_meta("decode_check"):
        return request.decode_check or meta.get_meta("decode_check")
    if meta.get_meta("decode") is None:
        return check_fast_decode(model, root, decode, state.index_dir)
    return None  # an index that shrank before the fast decode was measured


def _resolve_root(index_dir: Path, asked: Path | None, meta: MetaView) -> Path:
    """The image folder: the one given (it must be the recorded one), else the recorded one."""
    recorded_root = meta.get_meta("root")
    if asked is None:
        if recorded_root is None:
            raise IndexFormatError(
                f"index {index_dir} records no image folder yet (its first build stopped early); "
                f"run `counterclip build FOLDER --index {index_dir}` again"
            )
        root = Path(recorded_root)
        if not root.is_dir():
            raise InputError(f"the image folder {root} recorded in index {index_dir} does not exist any more")
        return root
    if recorded_root is not None and Path(recorded_root) != asked:
        raise InputError(
            f"index {index_dir} was built from {recorded_root}, not {asked}; "
            f"run `counterclip update {index_dir}` or choose another --index directory"
        )
    return asked


def _resolve_model(index_dir: Path, request: BuildRequest, meta: MetaView) -> ModelChoice:
    """The model: the recorded spec reloaded (its weights must still be the recorded ones), or the one
    given (it must be the index's)."""
    recorded_spec = meta.get_meta("model_spec")
    recorded_fp = meta.get_meta("fingerprint")
    if request.model is None and recorded_fp is not None:
        spec = ModelSpec.from_dict(recorded_spec)
        dim = int(meta.get_meta("embed_dim"))
        recorded_score = meta.get_meta("pair_score")
        score = PairScore.from_dict(recorded_score) if recorded_score else None
        # loaded now: weights changed in place are refused before any write; files moved are named
        model = load_index_model(index_dir, ModelRecord(spec, recorded_fp, dim), None, request.device)
        if model.fingerprint != recorded_fp:
            raise IndexFormatError(
                f"the model {spec} recorded in index {index_dir} now loads different weights "
                f"(fingerprint {model.fingerprint}, the index was built with {recorded_fp}); "
                "pass the original weights with --model, or build a new index"
            )
        return ModelChoice(model, spec, recorded_fp, dim, score)
    arg = DEFAULT_MODEL if request.model is None else request.model
    model = arg if isinstance(arg, ClipModel) else load_model(arg, device=request.device)
    if recorded_fp is not None and model.fingerprint != recorded_fp:
        raise IndexFormatError(
            f"index {index_dir} was built with model {ModelSpec.from_dict(recorded_spec)} "
            f"(fingerprint {recorded_fp}), not {model.spec} (fingerprint {model.fingerprint}); "
            "use the same model, or build a new index for this one"
        )
    return ModelChoice(model, model.spec, model.fingerprint, model.embed_dim, model.pair_score)


def _caption_file(
    state: BuildState, meta: MetaView, key: str, arg: str | os.PathLike[str] | None
) -> Path | None:
    """A captions or vocabulary file: the one given ("" clears it), else the recorded one if still there."""
    if arg is not None and str(arg) != "":
        path = Path(arg).expanduser().resolve()
        if not path.is_file():
            raise InputError(f"{key.replace('_', ' ')} {path} does not exist")
        return path
    if arg is not None:  # "" clears the recorded file
        return None
    recorded = meta.get_meta(key)
    if recorded is None:
        return None
    path = Path(recorded)
    if not path.is_file():
        state.warnings.append(
            f"{key.replace('_', ' ')} {path} recorded in the index is gone; its captions were removed"
        )
        return None
    return path


def _decode_options(state: BuildState, meta: MetaView, cfg: IndexCfg, model: ClipModel) -> DecodeOptions:
    """How files are decoded: fixed when the index is created, so every vector is made the same way."""
    recorded = meta.get_meta("decode")
    if recorded is None:
        return fresh_decode_options(cfg, model)
    options = DecodeOptions(**recorded)
    wanted = (cfg.max_pixels, cfg.max_side, cfg.max_file_bytes, cfg.downscale)
    have = (options.max_pixels, options.max_side, options.max_file_bytes, options.min_side is not None)
    if wanted != have:
        state.warnings.append(
            "decode settings are fixed when an index is created; the new ones were ignored "
            "(build a new index to change them)"
        )
    return options
