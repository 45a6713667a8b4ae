"""``build --store URI``: the built index copied into a vector store, resumably, and its side manifest.

The build itself runs as always (its stages, its resume); then `publish_to_store` brings the store to the
index: the target is checked before anything is written (the vectors' width; ids both hold must have the
same vectors, else the store holds another model's), the items the store lacks are added and those the
index no longer has removed (a run stopped half-way resumes where it stopped: the store's own ids say
what is done), the search is chosen and tuned (`ann.tune`), and ``store.json`` is written last.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from counterclip.errors import IndexFormatError, InputError
from counterclip.index_builder.config import IndexCfg
from counterclip.index_builder.faiss_tune import CROSS_NAMES
from counterclip.index_builder.index import Index
from counterclip.index_builder.stores import ann
from counterclip.index_builder.stores.base import VectorStore
from counterclip.index_builder.stores.faiss_store import FaissStore
from counterclip.index_builder.stores.side import Fields, SideManifest, write_side
from counterclip.index_builder.stores.uri import StoreURI, open_store, parse_store_uri

LOG = logging.getLogger(__name__)
BATCH = 4096  # items per write
SAMPLE = 64  # image ids whose vectors the side directory keeps (drift)
SAME_VECTOR_COS = 0.999  # an id both hold with vectors further apart: another model's vectors


def publish_to_store(
    index_dir: str | os.PathLike[str],
    uri: str | StoreURI,
    exact_max: int | None = None,
    captions: bool = True,
) -> dict[str, Any]:
    """Copy the index at ``index_dir`` into the store ``uri`` (images, and captions beside them in
    ``NAME_captions``) and write the side manifest; the engine then reads the store.

    Args:
        index_dir: a built index.
        uri: ``lancedb://DIR/TABLE``, ``qdrant://HOST:PORT/NAME`` or ``qdrant+local://DIR/NAME``.
        exact_max: up to this many vectors the store searches exactly, above it through its ANN index.
            Default: None (the index recipe's, as for FAISS: `IndexCfg.exact_max`).
        captions: publish the captions too (the text side needs them). Default: True.

    Returns:
        What was done: per collection the items added, removed and held, and the search record.

    Raises:
        IndexFormatError: the store holds vectors of another width or of another model (nothing written).
        StoreUnavailableError: the store does not answer.
    """
    target = uri if isinstance(uri, StoreURI) else parse_store_uri(uri)
    if target.kind == "faiss":
        raise InputError("--store: counterclip's own index is the default; give a LanceDB or Qdrant address")
    started = time.perf_counter()
    with Index.open(index_dir) as idx:
        kinds = ["images"] + (["captions"] if captions and idx.captions.count else [])
        addresses = {"images": target, "captions": target.captions()}
        stores: dict[str, VectorStore] = {}
        try:
            for kind in kinds:
                stores[kind] = open_store(addresses[kind])
                check_target(stores[kind], FaissStore(idx, kind), idx.fingerprint)
            done = {kind: sync(FaissStore(idx, kind), stores[kind]) for kind in kinds}
            cfg = IndexCfg(**{**IndexCfg().to_dict(), **_recall_settings(idx)})
            limit = cfg.exact_max if exact_max is None else exact_max
            for kind in kinds:  # tuned on the kinds of query FAISS is: the other modality's among them
                other = _sample_vectors(idx.captions if kind == "images" else idx.images, cfg.recall_sample)
                done[kind]["ann"] = ann.tune(
                    stores[kind], cfg, limit, cross=other, cross_name=CROSS_NAMES[kind]
                )
            side = _built_side(idx, {k: str(addresses[k]) for k in stores}, stores, done)
            write_side(idx.path, side, stores["images"].fetch(np.asarray(side.sample_ids, dtype=np.int64)))
        finally:
            for store in stores.values():
                store.close()
    LOG.info("published %s to %s in %.1f s", index_dir, target, time.perf_counter() - started)
    return {"store": str(target), **done, "seconds": round(time.perf_counter() - started, 1)}


def _built_side(
    idx: Index, addresses: dict[str, str], stores: dict[str, VectorStore], done: dict
) -> SideManifest:
    """The side manifest of a published index."""
    return SideManifest(
        kind="built",
        stores={k: addresses.get(k) for k in ("images", "captions")},
        fields=Fields(),
        model=idx.manifest.model,
        root=str(idx.root),
        decode=asdict(idx.decode_options),
        counts={k: store.count() for k, store in stores.items()},
        sample_ids=_sample_ids(idx.images.ids).tolist(),
        ann={k: done[k]["ann"] for k in stores},
        calibration=idx.calibration.to_dict() if idx.calibration is not None else None,
    )


def _recall_settings(idx: Index) -> dict[str, Any]:
    """The exact limit and recall settings of the index's recipe (a store is searched and measured as
    its FAISS index was)."""
    recorded = idx.manifest.settings.config or {}
    keys = ("exact_max", "recall_k", "recall_sample", "recall_target", "seed")
    return {k: recorded[k] for k in keys if k in recorded}


def _sample_vectors(collection: Any, size: int) -> np.ndarray:
    """Vectors of up to ``size`` items of a collection (the other modality's recall queries)."""
    ids = np.asarray(collection.ids)
    chosen = ids if len(ids) <= size else np.sort(np.random.default_rng(2).choice(ids, size, replace=False))
    return collection.vectors(chosen)


def _sample_ids(ids: np.ndarray) -> np.ndarray:
    if len(ids) <= SAMPLE:
        return np.asarray(ids, dtype=np.int64)
    return np.sort(np.random.default_rng(0).choice(ids, SAMPLE, replace=False))


def store_ids(store: VectorStore) -> np.ndarray:
    """Every id the store holds, ascending."""
    parts = [b.ids for b in store.iterate(vectors=False, payloads=False)]
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def check_target(target: VectorStore, source: FaissStore, fingerprint: str) -> None:
    """Refuse, before writing, a store whose vectors have another width or (on the ids both hold)
    another model's values, or that holds only items this index does not know."""
    dim = target.dim()
    if dim is None:
        return
    if dim != source.dim():
        raise IndexFormatError(
            f"store {target.uri} holds vectors of width {dim}; the index's model ({fingerprint[:12]}) makes "
            f"{source.dim()}: publish into another table or collection (nothing was written)"
        )
    held = store_ids(target)
    if not len(held):
        return
    shared = np.intersect1d(held, source.collection.ids)
    if not len(shared):
        raise IndexFormatError(
            f"store {target.uri} holds {len(held)} items, none of them this index's: it is another "
            "collection; publish into a new table or collection, or attach it (`counterclip attach`)"
        )
    sample = _sample_ids(shared)
    cosines = np.sum(target.fetch(sample) * source.fetch(sample), axis=1)
    if float(cosines.min()) < SAME_VECTOR_COS:
        raise IndexFormatError(
            f"store {target.uri} holds other vectors for this index's ids (lowest cosine "
            f"{float(cosines.min()):.3f} over {len(sample)} of them, median {float(np.median(cosines)):.3f}): "
            "another model made them; publish into another table or collection (nothing was written)"
        )


def sync(source: FaissStore, target: VectorStore) -> dict[str, Any]:
    """Add to ``target`` what it lacks of ``source`` and remove what ``source`` no longer has."""
    held, wanted = store_ids(target), np.asarray(source.collection.ids, dtype=np.int64)
    missing, extra = np.setdiff1d(wanted, held), np.setdiff1d(held, wanted)
    if len(held) and len(missing):
        LOG.info(
            "%s: resuming, %d of %d items already there", target.uri, len(wanted) - len(missing), len(wanted)
        )
    if not target.exists():
        target.create(int(source.dim() or 0))
    for start in range(0, len(missing), BATCH):
        part = missing[start : start + BATCH]
        target.add(part, source.fetch(part), [p or {} for p in source.payloads(part)])
        LOG.info("%s: %d / %d written", target.uri, min(start + BATCH, len(missing)), len(missing))
    if len(extra):
        target.delete(extra)
    compact = getattr(target, "compact", None)
    if compact is not None and (len(missing) or len(extra)):
        compact()
    return {"added": int(len(missing)), "removed": int(len(extra)), "count": int(target.count())}


def published_store(index_dir: str | os.PathLike[str]) -> str | None:
    """The store a built index was published to (its ``store.json``), or None."""
    from counterclip.index_builder.stores.side import is_store_index, read_side

    path = Path(index_dir).expanduser()
    if not is_store_index(path):
        return None
    side = read_side(path)
    return side.stores["images"] if side.kind == "built" else None


def check_store_first(uri: str, model: Any, device: str = "auto") -> Any:
    """Before a build with ``--store``: the store answers, and when its collection exists already its
    vectors' width is the model's. Returns the model (loaded when the check needed it, so the build
    does not load it twice).

    Raises:
        StoreUnavailableError: the store does not answer.
        IndexFormatError: the collection holds vectors of another width.
    """
    from counterclip.index_builder.build_plan import DEFAULT_MODEL
    from counterclip.models import ClipModel, load_model

    target = parse_store_uri(uri)
    if target.kind == "faiss":
        raise InputError("--store: counterclip's own index is the default; give a LanceDB or Qdrant address")
    store = open_store(target)
    try:
        dim = store.dim()
    finally:
        store.close()
    if dim is None:
        return model
    clip = model if isinstance(model, ClipModel) else load_model(model or DEFAULT_MODEL, device=device)
    if dim != clip.embed_dim:
        raise IndexFormatError(
            f"store {target} holds vectors of width {dim}; {clip.spec} makes {clip.embed_dim}: build into "
            "another table or collection (nothing was written)"
        )
    return clip


def store_line(done: dict[str, Any]) -> str:
    """The summary line of a publication: ``store      lancedb://... 1200 images (+1200 -0), ivf_pq recall@10 0.97``."""
    images = done.get("images", {})
    search = images.get("ann", {})
    return (
        f"  store      {done.get('store')} {images.get('count')} images (+{images.get('added')} "
        f"-{images.get('removed')}), {search.get('kind')} search {search.get('search_params') or ''} "
        f"recall@{search.get('recall_k')} {search.get('recall_at_k')}"
    )
