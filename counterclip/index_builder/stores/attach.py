"""``counterclip attach``: register a collection an app already filled (its own ids, vectors and payload),
without copying it: only the side directory is written (`side`).

Before anything is written the collection is checked: its vectors' width is the model's, and a sample of
its items, re-encoded from the files their payload names, agrees with the stored vectors
(`agreement.Agreement`, refused below `agreement.AGREEMENT_MIN` with the measured cosines). The measured
agreement widens the engine's stale test by as much (``tolerance_cosine``), the collection's own ANN
index (if any) is tuned and measured without being rebuilt, and with ``caption_field`` a calibration is
fitted on the app's own (image, caption) pairs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from counterclip.calibration import Calibration, fit_calibration, known_pair_scores
from counterclip.errors import IndexFormatError, InputError
from counterclip.index_builder.agreement import AGREEMENT_MIN, Agreement, agreement
from counterclip.index_builder.decode import DecodeError, DecodeOptions, load_image
from counterclip.index_builder.manifest import ModelRecord
from counterclip.index_builder.stores import ann
from counterclip.index_builder.stores.base import VectorStore
from counterclip.index_builder.stores.publish import SAMPLE, store_ids
from counterclip.index_builder.stores.side import Fields, SideManifest, write_side
from counterclip.index_builder.stores.store_collection import StoreCollection
from counterclip.index_builder.stores.uri import open_store, parse_store_uri
from counterclip.models import ClipModel, ModelSpec, load_model

LOG = logging.getLogger(__name__)
AGREEMENT_SAMPLE = 32  # items re-encoded from their files to check the model
CALIBRATION_PAIRS = 2000  # (image, own caption) pairs a calibration is fitted on, at most


def attach_collection(
    uri: str,
    index_dir: str | os.PathLike[str],
    model: str | ModelSpec | ClipModel,
    vector_field: str = "vector",
    path_field: str = "path",
    caption_field: str | None = None,
    id_field: str = "id",
    root: str | os.PathLike[str] | None = None,
    device: str = "auto",
    exact_max: int = ann.EXACT_MAX,
) -> dict[str, Any]:
    """Attach the collection at ``uri`` as the index ``index_dir`` (a new side directory).

    Args:
        uri: ``lancedb://DIR/TABLE``, ``qdrant://HOST:PORT/NAME`` or ``qdrant+local://DIR/NAME``.
        index_dir: the side directory to write (what ``counterfactual``, ``search`` and ``serve`` open).
        model: the model that made the vectors (spec string, `ModelSpec` or loaded model).
        vector_field: the collection's vector (a Qdrant named vector, a LanceDB column). Default: ``vector``.
        path_field: the payload field naming each image file. Default: ``path``.
        caption_field: the payload field holding each image's caption(s), if any: calibration.
        id_field: LanceDB: the id column. Default: ``id``.
        root: the directory relative paths are relative to, and the only one ``serve`` serves files from.
            Default: the folder all sampled absolute paths share, else the working directory.
        device: where the model runs for the check. Default: ``auto``.
        exact_max: above this many vectors a Qdrant server's HNSW search is tuned. Default: `ann.EXACT_MAX`.

    Returns:
        What was found: items, agreement, search record, calibration (or None).

    Raises:
        IndexFormatError: vectors of another width, or not made by ``model`` (nothing written).
        InputError: no such collection, an empty one, or no readable file among the sampled paths.
        StoreUnavailableError: the store does not answer.
    """
    clip = model if isinstance(model, ClipModel) else load_model(model, device=device)
    base = Path(root).expanduser().absolute() if root is not None else None
    fields = Fields(vector=vector_field, path=path_field, caption=caption_field, id=id_field)
    store = open_store(parse_store_uri(uri), vector_field, id_field)
    try:
        side = _examine(store, clip, fields, base, exact_max)  # refused here: nothing written yet
        write_side(index_dir, side, store.fetch(np.asarray(side.sample_ids, dtype=np.int64)))
    finally:
        store.close()
    return {
        "index": str(Path(index_dir).expanduser().absolute()),
        "store": side.stores["images"],
        "images": side.counts["images"],
        "agreement": side.agreement,
        "ann": side.ann["images"],
        "calibration": Calibration.from_dict(side.calibration).name() if side.calibration else None,
    }


def _examine(
    store: VectorStore, clip: ClipModel, fields: Fields, root: Path | None, exact_max: int
) -> SideManifest:
    """The side manifest of an attached collection, once its vectors are known to be the model's."""
    _check_shape(store, clip)
    ids = store_ids(store)
    root = root or _shared_folder(store, fields, _sample(ids, AGREEMENT_SAMPLE))
    images = StoreCollection("images", store, clip.embed_dim, fields, root)
    measured = _agreement(images, ids, clip, store.uri)
    measured.check(f"store {store.uri}", str(clip.spec))
    calibration = _calibration(images, ids, clip, fields) if fields.caption else None
    runtime = {"runtime": "attached", "tolerance_cosine": round(measured.lowest, 6)}
    return SideManifest(
        kind="attached",
        stores={"images": store.uri, "captions": None},
        fields=fields,
        model=ModelRecord(clip.spec, clip.fingerprint, clip.embed_dim, clip.pair_score.to_dict(), runtime),
        root=str(root),
        decode=asdict(DecodeOptions()),
        counts={"images": len(ids)},
        sample_ids=_sample(ids, SAMPLE, seed=1).tolist(),
        ann={"images": ann.tune(store, None, exact_max, build=False)},
        agreement=measured.to_dict(),
        calibration=calibration.to_dict() if calibration is not None else None,
    )


def _check_shape(store: VectorStore, clip: ClipModel) -> None:
    if not store.exists():
        raise InputError(f"store {store.uri}: no such collection (attach registers an existing one)")
    dim = store.dim()
    if dim != clip.embed_dim:
        raise IndexFormatError(
            f"store {store.uri} holds vectors of width {dim}; {clip.spec} makes {clip.embed_dim}: give the "
            "model that made them (nothing was written)"
        )
    if store.count() == 0:
        raise InputError(f"store {store.uri} is empty: nothing to attach")


def _shared_folder(store: VectorStore, fields: Fields, ids: np.ndarray) -> Path:
    """The folder the sampled absolute paths share (relative ones: the working directory)."""
    paths = [str(p.get(fields.path)) for p in store.payloads(ids) if p and p.get(fields.path)]
    absolute = [p for p in paths if os.path.isabs(p)]
    if not absolute or len(absolute) < len(paths):
        return Path.cwd()
    return Path(os.path.commonpath([os.path.dirname(p) for p in absolute]))


def _sample(ids: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    if len(ids) <= size:
        return ids
    return np.sort(np.random.default_rng(seed).choice(ids, size, replace=False))


def _agreement(images: StoreCollection, ids: np.ndarray, clip: ClipModel, uri: str) -> Agreement:
    """Stored vectors against fresh encodes of their files, on a sample (unreadable files skipped)."""
    chosen = _sample(ids, AGREEMENT_SAMPLE)
    readable, paths, pictures = [], [], []
    for meta in images.meta(chosen):
        if not meta["abs_path"]:
            continue
        try:
            pictures.append(load_image(meta["abs_path"], DecodeOptions()).image)
        except DecodeError:
            continue
        readable.append(meta["id"])
        paths.append(str(meta["abs_path"]))
    if not readable:
        raise InputError(
            f"store {uri}: none of the {len(chosen)} sampled items names a readable file in its payload "
            f"path field; check --path-field and --root"
        )
    fresh = np.asarray(_numpy(clip.encode_pil(pictures)), dtype=np.float32)
    unreadable = len(chosen) - len(readable)
    return agreement(images.vectors(readable), fresh, paths, AGREEMENT_MIN, unreadable)


def _calibration(
    images: StoreCollection, ids: np.ndarray, clip: ClipModel, fields: Fields
) -> Calibration | None:
    """A calibration fitted on the collection's own (image, caption) pairs, or None when too few."""
    chosen = _sample(ids, CALIBRATION_PAIRS, seed=2)
    captions = StoreCollection("captions", None, clip.embed_dim, fields, None)
    captions.images_store = images.store  # the images' own captions, from their payload
    pairs = [(i, texts[0]) for i, texts in captions.texts_of_images(chosen).items()]
    if len(pairs) < 2:
        return None
    unique = sorted({t for _, t in pairs})
    encoded = np.asarray(_numpy(clip.encode_texts(unique)), dtype=np.float32)
    key = {t: n for n, t in enumerate(unique)}
    caption_keys = np.array([key[t] for _, t in pairs], dtype=np.int64)
    image_vecs = images.vectors([i for i, _ in pairs])
    positives, negatives = known_pair_scores(image_vecs, encoded[caption_keys], caption_keys, clip.pair_score)
    try:
        fitted = fit_calibration(
            positives, negatives, "captions", clip.fingerprint, f"captions of {len(pairs)} attached images"
        )
    except InputError as exc:
        LOG.info("no calibration: %s", exc)
        return None
    return dataclasses.replace(fitted, extras={"origin": "attach", "pairs": len(positives)})


def _numpy(embeddings: Any) -> Any:
    return embeddings.numpy() if hasattr(embeddings, "numpy") else embeddings
