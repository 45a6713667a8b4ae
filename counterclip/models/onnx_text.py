"""A text encoder opened from the ONNX cache alone: no torch, no open_clip, no model load.

For a cold text query (``counterclip search IDX --text ...``) the index already records the model spec and
its weights fingerprint; if `OnnxEncoder` exported that model's text tower before, this module can run it
without importing torch (which alone takes longer than the whole query should). It is trusted only when:

- the cache holds ``<fingerprint>/text.fp32.onnx`` with its record (checked against torch at export), and
- the record's ``standalone`` entry names the files the spec loads its weights from (bundled model, local
  checkpoint / config, local Hugging Face or open_clip directory) with a SHA-256 equal to theirs now: the
  same bytes give the same fingerprint, so loading them would give the checked weights; and
- the tokenizer runs without torch and gave the model's own token ids on the check texts at export:
  CLIP's byte-level BPE (open_clip's ``SimpleTokenizer``, ported below) or a Hugging Face fast tokenizer
  (``tokenizers``, from the ``tokenizer.json`` saved beside the export).

Anything else (hub tags, random weights, a changed file, another tokenizer) gives None and a reason, and
the caller loads the model with torch as usual. Nothing here imports torch.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import importlib.util
import json
import logging
import os
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from counterclip.calibration import Calibration
from counterclip.errors import RuntimeExportError
from counterclip.models.onnx_cache import file_digest
from counterclip.models.onnx_common import (
    CACHE_FORMAT,
    FP32_MIN_COSINE,
    default_cache_dir,
    onnxruntime_available,
    unit,
)
from counterclip.models.onnx_probe import PROBE_MAX_ABS, PROBE_TEXT, embedding_problem, session_probe
from counterclip.models.spec import ModelSpec
from counterclip.scores import PairScore

LOG = logging.getLogger(__name__)
TOKENIZER_FILE = "text.tokenizer.json"  # a Hugging Face fast tokenizer, saved beside the text export
TOKENIZER_CHECK_TEXTS = (
    "",
    "a photo of a dog",
    "A Small RED circle, on a   blue background!",
    "two people walking along a beach at sunset, with a lighthouse in the distance and gulls overhead, "
    "photographed on film in the early morning light of a cold winter day near the harbour",
    "ünïcödé naïve café, Ｆｕｌｌｗｉｄｔｈ, emoji 🐶 and numbers 1234",
    "fish &amp; chips &lt;b&gt; it's they'll we'd",
)


# --- where a spec's weights come from ------------------------------------------------------------------
def weight_files(spec: ModelSpec) -> list[Path] | None:
    """The local files ``load_model(spec)`` reads its weights and configuration from, or None when they are
    not local files (hub tags and ids, random weights)."""
    if spec.backend == "bundled":
        directory = Path(str(resources.files("counterclip"))) / "data" / spec.name
        return [directory / "config.json", directory / "weights.safetensors"]
    if spec.source in ("local-dir",) or (spec.backend == "hf" and spec.source == "local"):
        directory = Path(spec.name).expanduser()
        return sorted(p for p in directory.iterdir() if p.is_file()) if directory.is_dir() else None
    if spec.backend == "open_clip" and spec.source == "local" and spec.pretrained:
        files = [Path(spec.pretrained).expanduser()]
        if spec.name.lower().endswith(".json"):
            files.insert(0, Path(spec.name).expanduser())
        return files
    return None


def files_digest(paths: Sequence[Path]) -> str | None:
    """SHA-256 over the names and bytes of ``paths`` (None if one is missing)."""
    digest = hashlib.sha256()
    for path in paths:
        if not path.is_file():
            return None
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:32]


# --- tokenizers without torch --------------------------------------------------------------------------
@lru_cache
def _bytes_to_unicode() -> dict[int, str]:
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def default_bpe_path() -> Path | None:
    """open_clip's BPE vocabulary file, found without importing open_clip (which imports torch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    return path if path.is_file() else None


class ClipBpeTokenizer:
    """CLIP's byte-level BPE tokenizer, as open_clip's ``SimpleTokenizer`` (clean ``lower``, truncation).

    Ported from OpenAI CLIP / open_clip (MIT licence) without torch: returns int64 numpy arrays
    ``(n, context_length)`` equal to ``SimpleTokenizer()(texts)``.
    """

    def __init__(self, context_length: int, bpe_path: Path | None = None) -> None:
        import regex

        bpe_path = bpe_path or default_bpe_path()
        if bpe_path is None:
            raise RuntimeExportError("CLIP's BPE vocabulary (shipped with open_clip_torch) was not found")
        merges = gzip.open(bpe_path).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
        pairs = [tuple(m.split()) for m in merges]
        vocab = list(_bytes_to_unicode().values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(p) for p in pairs]
        specials = ["<start_of_text>", "<end_of_text>"]
        vocab.extend(specials)
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.bpe_ranks = {pair: i for i, pair in enumerate(pairs)}
        self.cache = {t: t for t in specials}
        self.pattern = regex.compile(
            "|".join(specials) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        self.sot, self.eot = self.encoder[specials[0]], self.encoder[specials[1]]
        self.context_length = int(context_length)

    def _bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = {(a, b) for a, b in zip(word, word[1:], strict=False)}
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            merged: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    merged.extend(word[i:])
                    break
                merged.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
            if len(word) == 1:
                break
            pairs = {(a, b) for a, b in zip(word, word[1:], strict=False)}
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        import ftfy

        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        text = " ".join(text.split()).strip().lower()
        byte_encoder = _bytes_to_unicode()
        ids: list[int] = []
        for token in self.pattern.findall(text):
            token = "".join(byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self._bpe(token).split(" "))
        return ids

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            tokens = [self.sot, *self.encode(text), self.eot]
            if len(tokens) > self.context_length:
                tokens = tokens[: self.context_length]
                tokens[-1] = self.eot
            out[row, : len(tokens)] = tokens
        return out


class FastTokenizer:
    """A Hugging Face fast tokenizer (``tokenizers``) padded and truncated to ``context_length``."""

    def __init__(self, path: Path, context_length: int, pad_id: int) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.enable_truncation(max_length=int(context_length))
        self.tokenizer.enable_padding(length=int(context_length), pad_id=int(pad_id))
        self.context_length = int(context_length)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        encoded = self.tokenizer.encode_batch(list(texts))
        return np.asarray([e.ids for e in encoded], dtype=np.int64).reshape(len(texts), self.context_length)


def make_tokenizer(config: dict[str, Any], directory: Path) -> ClipBpeTokenizer | FastTokenizer:
    """The tokenizer a ``standalone.tokenizer`` record describes."""
    if config["kind"] == "clip-bpe":
        return ClipBpeTokenizer(config["context_length"])
    if config["kind"] == "hf-fast":
        return FastTokenizer(directory / TOKENIZER_FILE, config["context_length"], config["pad_id"])
    raise RuntimeExportError(f"unknown standalone tokenizer kind {config['kind']!r}")


# --- the encoder ----------------------------------------------------------------------------------------
class OnnxTextEncoder:
    """The text tower of a model from the ONNX cache, with its tokenizer, and nothing else (no torch).

    Open with `open`; ``encode_texts`` returns float32 numpy arrays (not torch tensors), L2-normalised.
    It also carries what a text search needs of the model (``pair_score``, ``calibration``,
    ``context_length``), so `counterclip.engine.Engine` can run a text search with it as its model.
    """

    tolerance_cosine = FP32_MIN_COSINE  # its embeddings vs torch's: checked at export

    def __init__(
        self,
        spec: ModelSpec,
        record: dict[str, Any],
        directory: Path,
        threads: int = 0,
        score: dict[str, Any] | None = None,
    ) -> None:
        import onnxruntime as ort

        self.spec = spec
        self.fingerprint: str = record["fingerprint"]
        self.embed_dim: int = int(record["standalone"]["embed_dim"])
        self.logit_scale: float = float(record["standalone"]["logit_scale"])
        self.record = record
        self.threads = int(threads)
        self._tokenizer = make_tokenizer(record["standalone"]["tokenizer"], directory)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = ort.InferenceSession(
            str(directory / record["file"]), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self._version = ort.__version__
        self.context_length: int = int(record["standalone"]["tokenizer"]["context_length"])
        self.pair_score = PairScore.from_dict(score) if score else PairScore(scale=self.logit_scale)
        self.calibration = _shipped_calibration(spec, self.fingerprint)

    @classmethod
    def open(
        cls,
        spec: ModelSpec | dict[str, Any],
        fingerprint: str,
        cache_dir: str | os.PathLike[str] | None = None,
        threads: int = 0,
        score: dict[str, Any] | None = None,
    ) -> tuple[OnnxTextEncoder | None, str]:
        """``(encoder, "")`` when the cache can serve this model's text tower without torch, else
        ``(None, reason)``.

        Args:
            spec: the model spec the index records.
            fingerprint: the weights fingerprint the index records.
            cache_dir: the ONNX cache root. Default: `default_cache_dir()`.
            threads: intra-op threads (0 lets ONNX Runtime choose). Default: 0.
            score: the model's `PairScore.to_dict()` the index records. Default: None (CLIP's
                ``logit_scale * cos``, what the export recorded).
        """
        spec = spec if isinstance(spec, ModelSpec) else ModelSpec.from_dict(spec)
        if not onnxruntime_available():
            return None, "onnxruntime is not installed"
        directory = (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / fingerprint
        try:
            record = json.loads((directory / "text.fp32.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None, f"no text tower of fingerprint {fingerprint} in {directory.parent}"
        if record.get("format") != CACHE_FORMAT or record.get("fingerprint") != fingerprint:
            return None, f"the cache record in {directory} is of another format"
        onnx_file = directory / str(record.get("file"))
        if not onnx_file.is_file() or onnx_file.stat().st_size != record.get("bytes"):
            return None, f"{onnx_file} is missing or damaged"
        if file_digest(onnx_file) != record.get("xxh3"):
            LOG.warning(
                "ONNX cache: %s is not the file its record describes (damaged or replaced)", onnx_file
            )
            return None, f"{onnx_file} is not the file its record describes (damaged or replaced)"
        standalone = record.get("standalone")
        if not standalone:
            return None, "the export has no standalone entry (tokenizer or weight files not supported)"
        if standalone.get("spec") != spec.to_dict():
            return None, f"the cached text tower was exported for {standalone.get('spec')}, not {spec}"
        files = weight_files(spec)
        if files is None or files_digest(files) != standalone.get("files_sha256"):
            return None, f"the weight files of {spec} changed since the export (or are not local)"
        try:
            encoder = cls(spec, record, directory, threads, score)
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime cannot load it: the torch path exports again
            return None, f"ONNX Runtime cannot load {onnx_file}: {str(exc).splitlines()[0][:200]}"
        problem = encoder.probe_problem()
        if problem is not None:
            LOG.warning("ONNX cache: the cached text tower in %s gives %s", directory, problem)
            return None, f"the cached text tower in {directory} gives {problem}"
        return encoder, ""

    def probe_problem(self) -> str | None:
        """Why this tower does not embed the probe as torch did at export (`onnx_probe`), or None."""
        probe = self.record.get("probe") or {}
        if probe.get("text") != PROBE_TEXT or not probe.get("embedding"):
            return "no probe recorded"
        got = session_probe(self._session, self.tokenize([PROBE_TEXT]))
        return embedding_problem(np.asarray(probe["embedding"]), got, FP32_MIN_COSINE, PROBE_MAX_ABS)

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        return self._tokenizer(list(texts))

    def encode_texts(self, texts: str | Sequence[str], batch_size: int = 256) -> np.ndarray:
        """A list gives ``(n, d)``, a single string ``(d,)``; float32 numpy, L2-normalised."""
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        if not items:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        tokens = self.tokenize(items)
        out = unit(
            np.concatenate(
                [
                    self._session.run(None, {self._input: tokens[i : i + batch_size]})[0]
                    for i in range(0, len(tokens), batch_size)
                ]
            )
        )
        return out[0] if single else out

    def runtime_info(self) -> dict[str, Any]:
        return {
            "runtime": "onnxruntime",
            "version": self._version,
            "providers": self._session.get_providers(),
            "opset": self.record.get("opset"),
            "threads": self.threads,
            "precision": {"text": "fp32"},
            "standalone": True,
            "towers": {"text": {"precision": "fp32", "vs_torch": self.record.get("vs_torch")}},
        }


def _shipped_calibration(spec: ModelSpec, fingerprint: str) -> Calibration | None:
    """The calibration shipped with a bundled model, read as `counterclip.models.factory.load_bundled` does."""
    if spec.backend != "bundled":
        return None
    path = Path(str(resources.files("counterclip"))) / "data" / spec.name / "calibration.json"
    return Calibration.read(path).check_model(fingerprint, str(spec)) if path.is_file() else None


def standalone_entry(model: Any, directory: Path) -> tuple[dict[str, Any] | None, str]:
    """At export time: what lets `OnnxTextEncoder.open` run this model's text tower without torch.

    Returns ``(entry, "")`` to store in the text record, or ``(None, reason)``. A Hugging Face fast
    tokenizer is saved to ``directory / TOKENIZER_FILE``; either tokenizer must reproduce
    ``model.tokenize`` exactly on `TOKENIZER_CHECK_TEXTS`.
    """
    files = weight_files(model.spec)
    if files is None:
        return None, f"{model.spec} does not load from local files"
    digest = files_digest(files)
    if digest is None:
        return None, f"a weight file of {model.spec} is missing"
    backend_tokenizer = getattr(getattr(model, "_tokenizer", None), "backend_tokenizer", None)
    if backend_tokenizer is not None:  # transformers fast tokenizer
        tmp = directory / f".{TOKENIZER_FILE}.{os.getpid()}.tmp"
        backend_tokenizer.save(str(tmp))
        os.replace(tmp, directory / TOKENIZER_FILE)  # atomic: a reader sees the old file or the new one
        pad_id = getattr(model._tokenizer, "pad_token_id", None)
        config = {"kind": "hf-fast", "context_length": model.context_length, "pad_id": int(pad_id or 0)}
    else:
        config = {"kind": "clip-bpe", "context_length": model.context_length}
    try:
        tokenizer = make_tokenizer(config, directory)
        same = np.array_equal(
            tokenizer(list(TOKENIZER_CHECK_TEXTS)),
            np.asarray(model.tokenize(list(TOKENIZER_CHECK_TEXTS))).astype(np.int64),
        )
    except Exception as exc:  # noqa: BLE001 - any failure only means: no torch-free path for this model
        return None, f"the standalone tokenizer failed: {type(exc).__name__}: {exc}"
    if not same:
        return None, "no torch-free tokenizer reproduces this model's token ids"
    entry = {
        "spec": model.spec.to_dict(),
        "files_sha256": digest,
        "files": [p.name for p in files],
        "tokenizer": config,
        "embed_dim": int(model.embed_dim),
        "logit_scale": float(model.logit_scale),
    }
    return entry, ""
