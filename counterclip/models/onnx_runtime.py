"""ONNX Runtime for a loaded `ClipModel`: export each tower once per weights fingerprint, check it against
torch, run it on the CPU; optionally an int8 image tower, accepted only if it passes measured bars.

The work is split by job; this module holds the session and its use (`OnnxEncoder`, `create_encoder`)
and keeps every name importable from here:

- **Export and graph surgery** (`counterclip.models.onnx_export`, `counterclip.models.onnx_graph`): each
  tower (``image``: pixels -> unit embedding, ``text``: token ids -> unit embedding) is exported with
  ``torch.onnx.export`` (the TorchScript exporter, opset 17, dynamic batch axis). The optimised graph
  (``graph`` in the record): `nn.MultiheadAttention`'s fast path is written at export as three MatMuls and
  ONNX Runtime's ``MultiHeadAttention`` op; ONNX Runtime's transformer optimizer then fuses the rest (layer
  norms with their residual adds, GELUs with their biases, Hugging Face CLIP's attention); and where the
  tower keeps one token (the class token), its last layer is computed for that token only. Each step is
  checked against torch like the export; a step that fails or misses the bars falls back (fused graph
  without the narrowing, then the plain export), logged, with the reason recorded. ViT-B-32 on 2 CPUs:
  the model alone 1.2-1.3x torch's throughput, against ~1.2x for the plain export.
- **Check** (`counterclip.models.onnx_agreement`): before it enters the cache, an export is run on sample
  inputs at two batch sizes other than the traced one and compared with torch; it is refused
  (`RuntimeExportError`, with the figures) unless every embedding has cosine >= 0.9999 to torch's and no
  coordinate differs by more than 1e-3.
- **Cache** (`counterclip.models.onnx_cache`): ``CACHE/<fingerprint>/<tower>.<precision>.onnx`` with a
  JSON record beside it; both are written atomically (temp file in the same directory, fsync, rename), the
  record last. Nothing cached is trusted: the file must have the hash its record holds, and its session
  must embed a probe input as torch does (`counterclip.models.onnx_probe`) before it is used; otherwise
  it is exported again, said in one warning line. A tower is exported when it is first used, so text-only work (a query) never exports or
  runs the image tower.
- **int8** (`counterclip.models.onnx_quantize`, image tower): ``int8-dynamic`` (weights int8, activations
  quantised with one range per batch, so an embedding moves slightly with its batch mates; checked at the
  build's batch size) or ``int8-static`` (activations calibrated on a sample of the user's own images
  through a ``CalibrationDataReader``). Accepted only if, on the user's sample, every int8 embedding has
  cosine >= 0.99 to its fp32 one AND an index of the int8 embeddings finds >= 98 % of the fp32 index's 10
  nearest neighbours (recall@10, each sample image as a query, itself left out); otherwise refused
  (`QuantizationRefusedError`, with the figures). The text tower stays fp32 (queries are one text each).
- **Run** (here): one ``InferenceSession`` per tower, created on first use and kept; CPU provider;
  intra-op threads settable; idle threads sleep rather than spin (`SESSION_CONFIG`).

- **Without torch**: the text export's record also says how `onnx_text.OnnxTextEncoder` may later run it
  with no torch at all (cold text queries): the SHA-256 of the spec's weight files and a torch-free
  tokenizer that reproduced the model's token ids.

The cache directory is ``$COUNTERCLIP_ONNX_CACHE``, else ``$XDG_CACHE_HOME/counterclip/onnx``, else
``~/.cache/counterclip/onnx``; a ``cache_dir`` argument overrides all of them.

Examples::

    >>> from counterclip.models import load_model
    >>> model = load_model("bundled:shapes", device="cpu")
    >>> encoder = OnnxEncoder(model)
    >>> encoder.encode_texts(["a red circle"]).shape
    torch.Size([1, 128])
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from counterclip.errors import InputError, RuntimeExportError
from counterclip.models.base import ClipModel, VisionGeometry
from counterclip.models.onnx_agreement import RECALL_K, Agreement, compare, recall_at_k  # noqa: F401
from counterclip.models.onnx_cache import OnnxCache, atomic_path, sha256_array
from counterclip.models.onnx_common import (  # noqa: F401 - re-exported
    CACHE_ENV,
    CACHE_FORMAT,
    FP32_MIN_COSINE,
    INT8_MIN_COSINE,
    OPSET,
    PRECISIONS,
    RUNTIMES,
    default_cache_dir,
    onnxruntime_available,
    run_in_batches,
    runtime_record,
    tolerance_cosine,
    unit,
)
from counterclip.models.onnx_export import (  # noqa: F401 - re-exported
    CHECK_TEXTS,
    FP32_MAX_ABS,
    GRAPH_FUSED,
    GRAPH_PLAIN,
    attention_shape,
    check_inputs,
    export_checked,
    export_tower,
    io_names,
)
from counterclip.models.onnx_graph import narrow_to_pooled_token, optimize_graph  # noqa: F401
from counterclip.models.onnx_probe import probe_problem, probe_record
from counterclip.models.onnx_quantize import (  # noqa: F401 - re-exported
    INT8_MIN_RECALL,
    MIN_CHECK_IMAGES,
    Int8Check,
    accepted_before,
    int8_sample,
    quantize_checked,
)
from counterclip.models.spec import ModelSpec

LOG = logging.getLogger(__name__)

TOWERS = ("image", "text")
# Session settings. Idle intra-op threads sleep instead of spinning: in the build pipeline the decode
# threads need those cycles (ViT-B-32, 128 JPEGs on 2 loaded CPUs: 4.95 against 4.43 img/s with spinning;
# the model alone: equal, 10.43 against 10.44 img/s).
SESSION_CONFIG = {"session.intra_op.allow_spinning": "0"}


def _require_onnxruntime() -> Any:
    if not onnxruntime_available():
        raise RuntimeExportError(
            "the ONNX runtime needs onnxruntime and onnx: pip install 'counterclip[onnx]' (or use --runtime torch)"
        )
    import onnxruntime

    return onnxruntime


def new_session(ort: Any, path: Path, threads: int = 0) -> Any:
    """An ONNX Runtime ``InferenceSession`` of the file ``path`` on the CPU, with `SESSION_CONFIG` and
    ``threads`` intra-op threads (0: ONNX Runtime chooses); a file it cannot load is a `RuntimeExportError`."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for key, value in SESSION_CONFIG.items():
        options.add_session_config_entry(key, value)
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - a damaged file names itself
        raise RuntimeExportError(
            f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0][:200]}; delete it to re-export"
        ) from exc


class OnnxEncoder:
    """A `ClipModel`'s towers run by ONNX Runtime, with the same encode API (an `Encoder`).

    Args:
        model: the loaded torch model (its fingerprint keys the cache; it is used to export and check, and
            stays available as ``torch_model`` for gradient work).
        precision: image tower precision: ``fp32``, ``int8-dynamic`` or ``int8-static``. The text tower is
            always fp32. Default: ``fp32``.
        sample: int8 only: preprocessed pixels ``(n, 3, H, W)`` of the user's own images, n >= 21; the
            int8 tower is checked on them (and ``int8-static`` calibrated on the first
            ``calibration_size``). Without it, an int8 tower accepted before (on any sample) is reused from
            the cache, and if there is none the encoder refuses. Default: None.
        cache_dir: cache root. Default: `default_cache_dir()`.
        threads: intra-op threads per session (0 lets ONNX Runtime choose). Default: 0.
        calibration_size: images of ``sample`` used to calibrate ``int8-static``. Default: 64.
        check_batch_size: batch size of the int8 check. ``int8-dynamic`` quantises activations with one
            range per batch, so an image's embedding moves slightly with its batch mates: check at the
            batch size the build uses. Default: 64 (the build's default).
        min_cosine: int8 bar: the lowest cosine of an int8 embedding to its fp32 one. Default: 0.99.
        min_recall: int8 bar: recall@10 of the int8 index against the fp32 index. Default: 0.98.

    Raises:
        RuntimeExportError: onnxruntime missing, an export that fails or does not match torch.
        QuantizationRefusedError: an int8 tower that misses a bar (the message gives the figures).

    Sessions are created on first use of their tower and kept: text-only use never exports the image tower.
    """

    def __init__(
        self,
        model: ClipModel,
        *,
        precision: str = "fp32",
        sample: torch.Tensor | np.ndarray | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        threads: int = 0,
        calibration_size: int = 64,
        check_batch_size: int = 64,
        min_cosine: float = INT8_MIN_COSINE,
        min_recall: float = INT8_MIN_RECALL,
    ) -> None:
        self._ort = _require_onnxruntime()
        if precision not in PRECISIONS:
            raise InputError(f"unknown ONNX precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
        if threads < 0:
            raise InputError(f"threads must be >= 0 (0 = let ONNX Runtime choose), got {threads}")
        self.torch_model = model
        self.spec: ModelSpec = model.spec
        self.embed_dim: int = model.embed_dim
        self.context_length: int = model.context_length
        self.precision = precision
        self.threads = int(threads)
        self.calibration_size = int(calibration_size)
        self.check_batch_size = int(check_batch_size)
        self.min_cosine = float(min_cosine)
        self.min_recall = float(min_recall)
        self.sample = None if sample is None else int8_sample(sample, model.vision_geometry.image_size)
        self.cache = OnnxCache(
            Path(cache_dir).expanduser() if cache_dir else default_cache_dir(), model.fingerprint
        )
        self._sessions: dict[str, Any] = {}
        self._records: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()  # one export / session per tower, also when threads share the encoder
        # "<tower>.<precision>" files this encoder wrote (not read from the cache)
        self.exported: list[str] = []

    # --- what the pipeline and the engine use ----------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return self.torch_model.fingerprint

    @property
    def logit_scale(self) -> float:
        return self.torch_model.logit_scale

    @property
    def pair_score(self):  # noqa: ANN201 - counterclip.scores.PairScore: the torch model's, one score
        return self.torch_model.pair_score

    @property
    def calibration(self):  # noqa: ANN201 - the calibration shipped with the weights, if any
        return getattr(self.torch_model, "calibration", None)

    @property
    def vision_geometry(self) -> VisionGeometry:
        return self.torch_model.vision_geometry

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.torch_model.preprocess(image)

    def preprocess_batch(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.torch_model.preprocess_batch(images)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.torch_model.tokenize(texts)

    def score(
        self, image_emb: torch.Tensor | np.ndarray, text_emb: torch.Tensor | np.ndarray
    ) -> torch.Tensor:
        return self.torch_model.score(image_emb, text_emb)

    def encode_images(self, pixels: torch.Tensor | np.ndarray, batch_size: int = 64) -> torch.Tensor:
        """Embed preprocessed images ``(n, 3, H, W)`` (or one ``(3, H, W)``) -> float32 CPU ``(n, d)`` / ``(d,)``."""
        array = (
            pixels.detach().to("cpu", torch.float32).numpy()
            if torch.is_tensor(pixels)
            else np.asarray(pixels)
        )
        single = array.ndim == 3
        out = self._run("image", array[None] if single else array.astype(np.float32, copy=False), batch_size)
        return out[0] if single else out

    def encode_texts(self, texts: str | Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Embed texts: a list gives ``(n, d)``, a single string ``(d,)``; float32 CPU, L2-normalised."""
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        tokens = (
            self.tokenize(items).numpy().astype(np.int64, copy=False) if items else np.zeros((0, 1), np.int64)
        )
        out = self._run("text", tokens, batch_size)
        return out[0] if single else out

    def encode_pil(self, images: Sequence[Image.Image], batch_size: int = 64) -> torch.Tensor:
        return self.encode_images(self.preprocess_batch(images), batch_size=batch_size)

    def runtime_info(self) -> dict[str, Any]:
        """Runtime, version, providers, opset, threads, precisions, and per loaded tower the measured agreement.

        ``towers`` holds the towers used so far (a text-only encoder reports only ``text``): for fp32 the
        cosine / max abs difference to torch; for int8 also its figures against fp32 (cosine, recall@10,
        images checked and calibrated on).
        """
        towers = {}
        for tower, record in sorted(self._records.items()):
            towers[tower] = {
                "precision": record["precision"],
                "file": str(self.cache.onnx_path(tower, record["precision"])),
                "vs_torch": record["vs_torch"],
                "graph": record.get("graph"),
                **({"vs_fp32": record["vs_fp32"]} if "vs_fp32" in record else {}),
            }
        providers = sorted({p for s in self._sessions.values() for p in s.get_providers()}) or [
            "CPUExecutionProvider"
        ]
        return {
            "runtime": "onnxruntime",
            "version": self._ort.__version__,
            "providers": providers,
            "opset": OPSET,
            "threads": self.threads,
            "session_config": dict(SESSION_CONFIG),
            "precision": {"image": self.precision, "text": "fp32"},
            "cache": str(self.cache.directory),
            "towers": towers,
        }

    @property
    def tolerance_cosine(self) -> float:
        """The cosine to torch fp32 its image embeddings are accepted at (export bar, and int8 bar)."""
        return tolerance_cosine(self.precision, self.min_cosine)

    def manifest_record(self) -> dict[str, Any]:
        """`runtime_info` reduced to what an index records (`counterclip.models.onnx_common.runtime_record`)."""
        return runtime_record(self.runtime_info(), "", self.tolerance_cosine)

    def __repr__(self) -> str:
        return (
            f"OnnxEncoder(spec={str(self.spec)!r}, precision={self.precision}, cache={self.cache.directory})"
        )

    # --- sessions ---------------------------------------------------------------------------------------
    def _run(self, tower: str, inputs: np.ndarray, batch_size: int) -> torch.Tensor:
        if len(inputs) == 0:
            return torch.empty(0, self.embed_dim)
        return torch.from_numpy(run_in_batches(self.session(tower), inputs, batch_size))

    def session(self, tower: str) -> Any:
        """The tower's ``InferenceSession`` (exported, checked and created on first call, then kept)."""
        if tower not in TOWERS:
            raise InputError(f"unknown tower {tower!r}; expected image or text")
        with self._lock:
            if tower not in self._sessions:
                record, session = checked_session(self, tower)
                self._sessions[tower] = session
                self._records[tower] = record
            return self._sessions[tower]

    def _new_session(self, path: Path) -> Any:
        return new_session(self._ort, path, self.threads)

    # --- the cache: each tower exported, checked (and quantised) once -------------------------------------
    def _ensure(self, tower: str) -> dict[str, Any]:
        """The cache record of the tower at the precision asked, exporting / quantising it if needed."""
        record = self._ensure_fp32(tower)
        if tower == "image" and self.precision != "fp32":
            record = self._ensure_int8()
        return record

    def _ensure_fp32(self, tower: str) -> dict[str, Any]:
        cached = self.cache.read(tower, "fp32")
        if cached is not None:
            LOG.debug("ONNX %s tower of %s from the cache %s", tower, self.spec, self.cache.directory)
            return cached
        started = time.perf_counter()
        target = self.cache.onnx_path(tower, "fp32")
        with atomic_path(target) as tmp:
            agreement, graph = export_checked(self.torch_model, tower, tmp, self._new_session, self.sample)
        record = self.cache.write_record(
            tower, "fp32", self._fp32_record(tower, agreement, graph, time.perf_counter() - started)
        )
        self.exported.append(f"{tower}.fp32")
        LOG.info(
            "exported the %s tower of %s to %s in %.1f s (%s graph; cosine to torch >= %.6f, max abs %.2e)",
            tower,
            self.spec,
            target,
            record["seconds"],
            graph["optimization"],
            agreement.cosine_min,
            agreement.max_abs,
        )
        return record

    def _fp32_record(
        self, tower: str, agreement: Agreement, graph: dict[str, Any], seconds: float
    ) -> dict[str, Any]:
        """What the cache records of a fresh fp32 export (beside the file's name, size and keys)."""
        extra: dict[str, Any] = {}
        if tower == "text":  # what lets OnnxTextEncoder run this tower later without torch
            from counterclip.models.onnx_text import standalone_entry

            entry, reason = standalone_entry(self.torch_model, self.cache.directory)
            extra = {"standalone": entry} if entry else {"standalone": None, "standalone_reason": reason}
        return {
            **extra,
            "opset": OPSET,
            "spec": self.spec.to_dict(),
            "torch": torch.__version__,
            "onnxruntime": self._ort.__version__,
            "input": {"name": io_names(tower)[0], "batch": "dynamic"},
            "graph": graph,
            "vs_torch": {
                **agreement.to_dict(),
                "min_cosine_bar": FP32_MIN_COSINE,
                "max_abs_bar": FP32_MAX_ABS,
            },
            "probe": probe_record(self.torch_model, tower),
            "seconds": round(seconds, 2),
        }

    def _ensure_int8(self) -> dict[str, Any]:
        precision = self.precision
        cached = self.cache.read("image", precision)
        if self.sample is None:
            if cached is None:
                what = "calibrate and check" if precision == "int8-static" else "check"
                raise RuntimeExportError(
                    f"{precision} needs a sample of your own images to {what} it against fp32, and no accepted "
                    f"{precision} image tower is cached in {self.cache.directory}; build or update the index "
                    f"with --runtime onnx --precision {precision} first (it checks it on your images), or use fp32"
                )
            return cached
        check = Int8Check(self.min_cosine, self.min_recall, self.check_batch_size, self.calibration_size)
        sample_hash = sha256_array(self.sample)
        if cached is not None and accepted_before(cached, sample_hash, len(self.sample), precision, check):
            return cached
        started = time.perf_counter()
        fp32_path = self.cache.onnx_path("image", "fp32")
        target = self.cache.onnx_path("image", precision)
        figures = quantize_checked(
            fp32_path, target, precision, self.sample, check, self._new_session, self.spec
        )
        figures["vs_fp32"]["sample_sha256"] = sample_hash
        fp32_record = self.cache.read("image", "fp32") or {}
        record = self.cache.write_record(
            "image",
            precision,
            {
                "opset": OPSET,
                "spec": self.spec.to_dict(),
                "onnxruntime": self._ort.__version__,
                "vs_torch": fp32_record["vs_torch"],
                "graph": fp32_record.get("graph"),  # the fp32 graph that was quantised
                "probe": fp32_record.get("probe"),  # torch's embedding of the probe
                **figures,
                "seconds": round(time.perf_counter() - started, 2),
            },
        )
        self.exported.append(f"image.{precision}")
        return record


def checked_session(encoder: OnnxEncoder, tower: str) -> tuple[dict[str, Any], Any]:
    """The tower's record and session for ``encoder``; a tower read from the cache must first embed the
    probe as torch does (`onnx_probe`), else it is exported again (said in one warning line)."""
    record = encoder._ensure(tower)
    path = encoder.cache.onnx_path(tower, record["precision"])
    if f"{tower}.{record['precision']}" in encoder.exported:  # checked against torch as it was made
        return record, encoder._new_session(path)
    try:
        session = encoder._new_session(path)
        problem = probe_problem(encoder.torch_model, tower, session, record["precision"], encoder.min_cosine)
    except RuntimeExportError as exc:
        problem = str(exc)
    if problem is None:
        return record, session
    LOG.warning(
        "ONNX cache: the cached %s tower of %s (%s) gives %s: exporting it again",
        tower,
        encoder.spec,
        record["precision"],
        problem,
    )
    encoder.cache.discard(tower, record["precision"])
    record = encoder._ensure(tower)
    return record, encoder._new_session(encoder.cache.onnx_path(tower, record["precision"]))


def create_encoder(
    model: ClipModel,
    runtime: str = "torch",
    **onnx_options: Any,
) -> ClipModel | OnnxEncoder:
    """``runtime="torch"`` -> ``model`` itself; ``"onnx"`` -> an `OnnxEncoder` over it (``onnx_options`` go to it).

    Examples::

        >>> encoder = create_encoder(model, "onnx", precision="int8-dynamic", sample=pixels)
    """
    if runtime == "torch":
        if onnx_options:
            raise InputError(f"options {sorted(onnx_options)} apply to --runtime onnx only")
        return model
    if runtime == "onnx":
        return OnnxEncoder(model, **onnx_options)
    raise InputError(f"unknown runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}")
