"""How closely an index's vectors follow the model's own encoding of its files, measured on a sample.

Parity is the contract: a stored vector is what the model's family computes from the file (the exact
decode: the file's pixels, in its own mode when the family's transform converts it). Everything that could
drift from that is measured against fresh exact encodes before it is trusted:

- the fast decode (``--fast-decode``: JPEG draft, box reduce), at build: `check_fast_decode` records the
  lowest and median cosine of the fast path to the exact path and refuses it below
  `FAST_DECODE_MIN_COSINE`, before anything is written;
- vectors made elsewhere (an import): `check_vectors` refuses them below `STORED_VECTOR_COSINE`, with the
  measured cosines, so an accepted import never reports its unchanged files as changed;
- a built index against the user's model today (``counterclip check IDX --model``): `check_model`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from counterclip.errors import InputError
from counterclip.index_builder.agreement import Agreement, agreement
from counterclip.index_builder.decode import DecodeError, DecodeOptions, load_image
from counterclip.index_builder.scan import scan_folder

#: The fast decode is refused when, on the build's sample, a vector of the fast path falls below this
#: cosine to the exact path's (the model then sees a noticeably different picture).
FAST_DECODE_MIN_COSINE = 0.995
#: A stored vector and a fresh exact encode of its unchanged file agree at least this well (the engine's
#: "changed since indexing" line, `engine.verify.STALE_COS`, is this number).
STORED_VECTOR_COSINE = 0.999
SAMPLE = 32  # files measured at build (fast decode) and on import
CHECK_SAMPLE = 64  # files `check_model` re-encodes by default


def spread(items: Sequence[Any], n: int) -> list[Any]:
    """Up to ``n`` of ``items``, evenly spread over them in their order."""
    step = max(1, len(items) // max(n, 1))
    return list(items[::step][:n])


def exact(options: DecodeOptions) -> DecodeOptions:
    """The same decode without shrinking: the file's pixels."""
    return dataclasses.replace(options, min_side=None)


def encode_files(model: Any, paths: Sequence[Path], options: DecodeOptions) -> tuple[list[Path], np.ndarray]:
    """The files of ``paths`` that decode, and their vectors ``(m, d)`` (the model's input as an index
    decoding with ``options`` gives it)."""
    kept, images = [], []
    for path in paths:
        try:
            images.append(load_image(path, options).model_input)
        except DecodeError:
            continue
        kept.append(path)
    if not images:
        return [], np.zeros((0, model.embed_dim), np.float32)
    return kept, model.encode_pil(images).numpy()


def check_fast_decode(model: Any, root: Path, options: DecodeOptions, index_dir: Path) -> dict[str, Any]:
    """Measure the fast decode (``options.min_side`` set) against the exact one on `SAMPLE` of the folder's
    images, before a new index is written; its record for the manifest (`Agreement` figures plus the side,
    how many of the sample it shrank and the seconds the measure took).

    Raises:
        InputError: the lowest cosine is below `FAST_DECODE_MIN_COSINE` (one line with the figures).
    """
    started = time.perf_counter()
    rels = sorted(e.rel for e in scan_folder(root, exclude=(index_dir,)) if e.error is None)
    paths = [root / rel for rel in spread(rels, SAMPLE)]
    kept, fast = encode_files(model, paths, options)
    shrunk = sum(load_image(p, options).image.size != load_image(p, exact(options)).image.size for p in kept)
    _, full = encode_files(model, kept, exact(options))
    measured = agreement(fast, full, [str(p.relative_to(root)) for p in kept], FAST_DECODE_MIN_COSINE)
    if not measured.holds:
        raise InputError(
            f"--fast-decode refused for {root}: on {measured.samples} of its images the fast decode's "
            f"vectors reach only cosine {measured.lowest:.6f} to the exact decode's (median {measured.median:.6f},"
            f" the bound is {FAST_DECODE_MIN_COSINE}; worst {measured.below[0]['path']}); build without "
            "--fast-decode to give the model the files' pixels"
        )
    seconds = round(time.perf_counter() - started, 3)
    return {**measured.to_dict(), "min_side": options.min_side, "shrunk": int(shrunk), "seconds": seconds}


def check_vectors(
    model: Any, pairs: Sequence[tuple[Path, np.ndarray]], options: DecodeOptions, what: str
) -> Agreement:
    """Vectors made elsewhere (``pairs`` of file and vector) against fresh exact encodes of their files.

    Raises:
        InputError: the lowest cosine is below `STORED_VECTOR_COSINE`: one line with the figures, saying
            ``what`` was refused (nothing has been written yet).
    """
    vectors = {str(path): vector for path, vector in pairs}
    kept, fresh = encode_files(model, [path for path, _ in pairs], exact(options))
    stored = np.stack([vectors[str(p)] for p in kept]) if kept else fresh
    measured = agreement(stored, fresh, [str(p) for p in kept], STORED_VECTOR_COSINE)
    if not measured.holds:
        raise InputError(
            f"{what} refused: its vectors are not {model.spec}'s encodes of their files ({measured.in_words()};"
            f" worst {measured.below[0]['path']} at {measured.below[0]['cosine']:.4f}): made by another model"
            " or with other preprocessing? Nothing was written"
        )
    return measured


@dataclass(frozen=True)
class ModelCheck:
    """`check_model`'s answer: how closely the index's stored vectors follow the model's encodes today."""

    index_dir: str
    model: str  # the spec string
    fingerprint: str
    agreement: Agreement  # on the files re-encoded
    changed: int  # sampled files whose bytes changed since indexing (not compared)
    unreadable: int  # sampled files missing, unreadable, or imported without a file here

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "agreement": self.agreement.to_dict()}

    def in_words(self) -> str:
        """One line: the model, the figures, what was left out."""
        skipped = [
            f"{n} {what}" for n, what in ((self.changed, "changed"), (self.unreadable, "without a file"))
        ]
        left = [s for s in skipped if not s.startswith("0 ")]
        return (
            f"{self.model} (fingerprint {self.fingerprint[:12]}): {self.agreement.in_words()} to the stored "
            f"vectors, re-encoded from their files" + (f" ({', '.join(left)} left out)" if left else "")
        )


def check_model(
    index_dir: str | Path, model: Any = None, sample: int = CHECK_SAMPLE, device: str = "auto"
) -> ModelCheck:
    """Re-encode ``sample`` indexed files (evenly spread over the ids) with the index's model and compare
    with their stored vectors: does the index still reflect the model?

    Args:
        index_dir: the index.
        model: the model (spec or loaded; its fingerprint must be the recorded one). Default: None (the
            recorded spec).
        sample: files to re-encode. Default: `CHECK_SAMPLE`.
        device: for a spec. Default: ``auto``.

    Returns:
        ModelCheck; its agreement holds when the lowest cosine reaches `STORED_VECTOR_COSINE` (widened by
        the tolerance of the runtime that embedded the vectors, e.g. int8).
    """
    from counterclip.index_builder.index import Index
    from counterclip.index_builder.index_model import load_index_model
    from counterclip.models.onnx_common import combine_cosines

    with Index.open(index_dir) as idx:
        loaded = load_index_model(idx.path, idx.manifest.model, model, device)
        metas = idx.images.meta(spread(idx.images.ids.tolist(), sample)) if idx.images.count else []
        kept, images, changed, unreadable = [], [], 0, 0
        for meta in metas:
            try:
                decoded = idx.load_image(meta["abs_path"]) if meta.get("abs_path") else None
            except DecodeError:
                decoded = None
            if decoded is None:
                unreadable += 1
            elif meta.get("sha256") and decoded.sha256 != meta["sha256"]:
                changed += 1
            else:
                kept.append(meta)
                images.append(decoded.model_input)
        stored = idx.images.vectors([m["id"] for m in kept]) if kept else np.zeros((0, idx.dim))
        tolerance = float((idx.manifest.model.runtime or {}).get("tolerance_cosine", 1.0))
    fresh = loaded.encode_pil(images).numpy() if images else stored
    bound = round(combine_cosines(STORED_VECTOR_COSINE, tolerance), 6)
    measured = agreement(stored, fresh, [m["path"] for m in kept], bound)
    return ModelCheck(str(index_dir), str(loaded.spec), loaded.fingerprint, measured, changed, unreadable)
