"""Calibrations recorded with an index: fitted on the images' own captions.

At build time the sidecars and the captions file give known pairs (an image and its caption); later,
``counterclip calibrate IDX --captions FILE`` fits one on a captions file of the user's choice without
adding its captions to the index. Either is written into the manifest as JSON (`Calibration.to_dict`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from counterclip.calibration import MIN_PAIRS, Calibration, fit_calibration, known_pair_scores
from counterclip.errors import IndexFormatError, InputError
from counterclip.index_builder import captions as caption_sources
from counterclip.index_builder.manifest import EMBEDDINGS_DIR, Manifest
from counterclip.index_builder.shards import ShardReader
from counterclip.index_builder.store import Store
from counterclip.scores import PairScore

LOG = logging.getLogger(__name__)
MAX_PAIRS = 20_000  # pairs a calibration is fitted on (a sample beyond that)


def _vectors(index_dir: Path, store: Store, kind: str, ids: np.ndarray, dim: int) -> np.ndarray:
    """Stored vectors of ``ids`` (rows of ``kind``), read from the shards."""
    rows = dict(
        (
            (int(i), (int(s), int(r)))
            for i, s, r in store.conn.execute(f"SELECT id, shard, row FROM {kind} WHERE status = 'indexed'")
        )
    )
    located = np.array([rows[int(i)] for i in ids], dtype=np.int64).reshape(-1, 2)
    reader = ShardReader(index_dir / EMBEDDINGS_DIR, kind)
    try:
        return reader.rows(located[:, 0], located[:, 1], dim)
    finally:
        reader.close()


def calibration_from_pairs(
    index_dir: Path,
    pairs: list[tuple[int, int]],
    pair_score: PairScore,
    fingerprint: str,
    origin: str,
    store: Store | None = None,
    dim: int | None = None,
) -> Calibration | None:
    """Fit a ``captions`` calibration on (image id, caption id) pairs of the index; None when there are
    too few images with captions to fit one (fewer than `MIN_PAIRS`)."""
    pairs = list(dict.fromkeys((int(i), int(c)) for i, c in pairs))  # first caption per (image, text)
    if len({i for i, _ in pairs}) < MIN_PAIRS:
        return None
    if len(pairs) > MAX_PAIRS:
        chosen = np.random.default_rng(0).choice(len(pairs), MAX_PAIRS, replace=False)
        pairs = [pairs[i] for i in sorted(chosen)]
    own = store is None
    store = store or Store(index_dir)
    try:
        dim = dim or int(store.get_meta("embed_dim"))
        image_ids = np.array([i for i, _ in pairs], dtype=np.int64)
        caption_ids = np.array([c for _, c in pairs], dtype=np.int64)
        image_vecs = _vectors(index_dir, store, "images", image_ids, dim)
        caption_vecs = _vectors(index_dir, store, "captions", caption_ids, dim)
    finally:
        if own:
            store.close()
    return _fit(
        image_vecs, caption_vecs, caption_ids, pair_score, fingerprint, origin, len(set(image_ids.tolist()))
    )


def _fit(
    image_vecs: np.ndarray,
    caption_vecs: np.ndarray,
    caption_keys: np.ndarray,
    pair_score: PairScore,
    fingerprint: str,
    origin: str,
    images: int,
) -> Calibration | None:
    positives, negatives = known_pair_scores(image_vecs, caption_vecs, caption_keys, pair_score)
    try:
        calibration = fit_calibration(
            positives, negatives, "captions", fingerprint, f"captions of {images} images in the index"
        )
    except InputError as exc:
        LOG.info("no calibration: %s", exc)
        return None
    return dataclasses.replace(calibration, extras={"origin": origin, "pairs": len(positives)})


def fit_on_captions_file(
    index_dir: str | os.PathLike[str], captions: str | os.PathLike[str], model: Any
) -> Calibration:
    """Fit a calibration on a captions file (``path,caption`` CSV or JSONL) against the index's current
    generation (`counterclip.index_builder.builder.calibrate_index` fits and records it).

    The captions are encoded with ``model`` (which must be the index's: same fingerprint).

    Raises:
        InputError: a missing or malformed captions file, too few of its paths in the index.
        IndexFormatError: not an index, or built with another model.
    """
    index_dir = Path(index_dir).expanduser().absolute()
    manifest = Manifest.read(index_dir)
    if model.fingerprint != manifest.model.fingerprint:
        raise IndexFormatError(
            f"index {index_dir} was built with {manifest.model.spec}, not {model.spec}: calibrate it with its "
            "own model"
        )
    path = Path(captions).expanduser()
    if not path.is_file():
        raise InputError(f"captions file {path} does not exist")
    root = Path(manifest.root)
    refs = [ref for ref in caption_sources.captions_file(path, root) if ref.image_rel]
    # the published generation is immutable: read without locks
    store = Store(index_dir / manifest.db_file, readonly=True)
    try:
        known = _known_pairs(store, refs)
        if len({i for i, _ in known}) < MIN_PAIRS:
            raise InputError(
                f"captions file {path} names {len({i for i, _ in known})} indexed images; a calibration needs "
                f"at least {MIN_PAIRS} (paths relative to {root})"
            )
        texts = sorted({t for _, t in known})
        key = {t: n for n, t in enumerate(texts)}
        text_vecs = model.encode_texts(texts).numpy()
        image_ids = np.array([i for i, _ in known], dtype=np.int64)
        image_vecs = _vectors(index_dir, store, "images", image_ids, manifest.model.embed_dim)
    finally:
        store.close()
    keys = np.array([key[t] for _, t in known])
    calibration = _fit(
        image_vecs,
        text_vecs[keys],
        keys,
        model.pair_score,
        model.fingerprint,
        "calibrate",
        len(set(image_ids.tolist())),
    )
    if calibration is None:
        raise InputError(f"captions file {path}: too few distinct pairs to calibrate on")
    return dataclasses.replace(calibration, description=f"{path.name}: {calibration.description}")


def _known_pairs(store: Store, refs: list[caption_sources.CaptionRef]) -> list[tuple[int, str]]:
    """``(image id, caption text)`` of the caption references that name an indexed image."""
    ids = {}
    for ref in refs:
        row = store.conn.execute(
            "SELECT id FROM images WHERE path_key = ? AND status = 'indexed'",
            (os.fsencode(ref.image_rel),),
        ).fetchone()
        if row is not None:
            ids.setdefault(ref.image_rel, int(row[0]))
    return [(ids[ref.image_rel], ref.text) for ref in refs if ref.image_rel in ids]
