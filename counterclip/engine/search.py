"""Plain retrieval by text, by image or by vector over one collection of the index, one query or a batch,
scored like every answer (the model's pair score; p(match) where the pair is an image and a text).

`search_vectors` is the faiss-like face for retrieval apps: ``(nq, d)`` in, `VectorHits` out (unpacks as
``D, I``); `search_batch` gives one `SearchResult` of `SearchHit` items per query.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from counterclip.engine.request import ImageQuery, encode_text, resolve_image
from counterclip.engine.resources import Resources
from counterclip.engine.results import SearchHit, SearchResult
from counterclip.engine.timing import Stopwatch
from counterclip.engine.verdicts import Evidence, no_match_warning, text_warnings
from counterclip.errors import InputError
from counterclip.index_builder.stores.store_collection import restricted

COLLECTIONS = ("images", "captions")


@dataclass(frozen=True)
class VectorHits:
    """The ``k`` nearest items of each query vector, as FAISS gives them: row ``q`` holds query ``q``'s
    hits, best first; a row with fewer than ``k`` hits is padded with id -1 and similarity -inf.

    ``D, I = engine.search_vectors(x, k)`` unpacks ``similarities`` and ``ids``.
    """

    similarities: np.ndarray  # (nq, k) float32 cosines, -1..1
    ids: np.ndarray  # (nq, k) int64 item ids, -1 where missing
    scores: np.ndarray  # (nq, k) float64: the model's pair score of each similarity (NaN where missing)

    def __iter__(self) -> Iterator[np.ndarray]:
        yield self.similarities
        yield self.ids

    def __len__(self) -> int:
        return len(self.ids)


def check_search(text: str | None, image: ImageQuery | None, k: int, collection: str) -> None:
    """Raise `InputError` naming what is wrong with a search before any work is done."""
    if (text is None) == (image is None):
        raise InputError("give exactly one of text or image to search by")
    _check_k_collection(k, collection)


def _check_k_collection(k: int, collection: str) -> None:
    if collection not in COLLECTIONS:
        raise InputError(f"collection must be images or captions, got {collection!r}")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise InputError(f"k must be a positive number of results, got {k!r}")


def as_query_vectors(vectors: Any, dim: int) -> np.ndarray:
    """``(nq, d)`` float32 unit rows from an array-like (a single ``(d,)`` vector is one query)."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[1] != dim or len(array) == 0:
        raise InputError(f"query vectors must have shape (n, {dim}) with n >= 1, got {tuple(array.shape)}")
    if not np.isfinite(array).all():
        raise InputError("query vectors hold NaN or infinite values")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if (norms == 0).any():
        raise InputError("a query vector is all zeros")
    return array / norms


def search_vectors(res: Resources, vectors: Any, k: int, collection: str) -> VectorHits:
    """The ``k`` nearest items of ``collection`` to each of ``vectors`` ``(nq, d)`` (normalised here)."""
    _check_k_collection(k, collection)
    queries = as_query_vectors(vectors, res.index.dim)
    similarities, ids = getattr(res.index, collection).search(queries, int(k))
    ids = np.asarray(ids, dtype=np.int64)
    similarities = np.where(ids < 0, -np.inf, similarities).astype(np.float32)
    scores = np.where(
        ids < 0, np.nan, res.pair_score.of_cos(np.where(ids < 0, 0.0, similarities).astype(np.float64))
    )
    return VectorHits(similarities, ids, scores)


def search(
    res: Resources,
    text: str | None,
    image: ImageQuery | None,
    k: int,
    collection: str,
    where: str | None = None,
) -> SearchResult:
    """The ``k`` nearest items of ``collection`` to the text or image (an indexed query image excluded),
    among the images that pass ``where`` when it is given."""
    check_search(text, image, k, collection)
    watch = Stopwatch()
    vector, query, exclude = _query(res, text, image, collection)
    watch.lap("encode")
    result = _results(res, vector[None], [query], [exclude], [text], k, collection, where)[0]
    watch.lap("search")
    result.timings = watch.total()
    return result


def search_batch(
    res: Resources,
    texts: Sequence[str] | None,
    images: Sequence[ImageQuery] | None,
    vectors: Any,
    k: int,
    collection: str,
) -> list[SearchResult]:
    """One `SearchResult` per query of a batch given as texts, images or vectors (exactly one of them); one
    FAISS call for the batch."""
    given = [
        name
        for name, value in (("texts", texts), ("images", images), ("vectors", vectors))
        if value is not None
    ]
    if len(given) != 1:
        raise InputError("give exactly one of texts, images or vectors to search by")
    _check_k_collection(k, collection)
    if texts is not None:
        if isinstance(texts, str) or not texts:
            raise InputError("texts must be a non-empty list of query texts")
        encoded = np.stack([encode_text(res.encoder, t) for t in texts])
        queries = [{"text": t} for t in texts]
        return _results(res, encoded, queries, [None] * len(texts), list(texts), k, collection)
    if images is not None:
        if not images:
            raise InputError("images must be a non-empty list of query images")
        made = [_query(res, None, image, collection) for image in images]
        return _results(res, np.stack([m[0] for m in made]), [m[1] for m in made], [m[2] for m in made],
                        [None] * len(made), k, collection)  # fmt: skip
    queries_ = as_query_vectors(vectors, res.index.dim)
    described = [{"vector": i} for i in range(len(queries_))]
    return _results(res, queries_, described, [None] * len(queries_), [None] * len(queries_), k, collection)


def _query(
    res: Resources, text: str | None, image: ImageQuery | None, collection: str
) -> tuple[np.ndarray, dict[str, Any], int | None]:
    """The query's vector, its description, and the id to leave out (an indexed query image)."""
    if text is not None:
        return encode_text(res.encoder, text), {"text": text}, None
    resolved = resolve_image(res.index, res.encoder, image)
    return resolved.vector, resolved.described, resolved.id if collection == "images" else None


def _results(
    res: Resources,
    vectors: np.ndarray,
    queries: list[dict[str, Any]],
    excludes: list[int | None],
    texts: list[str | None],
    k: int,
    collection: str,
    where: str | None = None,
) -> list[SearchResult]:
    """The hits of each query row (its own id left out), with p(match) for image-text pairs; only the
    images that pass ``where`` when it is given."""
    store = getattr(res.index, collection)
    if where:
        if collection != "images":
            raise InputError("--where restricts images; the captions have no fields to filter on")
        store = restricted(store, where)
    found, ids = store.search(vectors.astype(np.float32), k + any(e is not None for e in excludes))
    out = []
    for row, (query, exclude, text) in enumerate(zip(queries, excludes, texts, strict=True)):
        # an image-text pair: p(match) applies (a bare vector's modality is unknown: none)
        cross_modal = "vector" not in query and ("text" in query) == (collection == "images")
        evidence = res.evidence(res.defaults.calibration) if cross_modal else Evidence(None)
        kept = [
            (float(c), int(i)) for c, i in zip(found[row], ids[row], strict=True) if i >= 0 and i != exclude
        ]
        metas = store.meta([i for _, i in kept[:k]]) if kept else []
        items = []
        for (cosine, item_id), meta in zip(kept[:k], metas, strict=True):
            score = float(res.pair_score.of_cos(cosine))
            items.append(
                SearchHit(
                    id=item_id,
                    kind="image" if collection == "images" else "caption",
                    path=meta.get("path"),
                    text=meta.get("text"),
                    similarity=cosine,
                    score=score,
                    p_match=evidence.p_match(score) if evidence.usable else None,
                    distance=1.0 - cosine,
                    rank=len(items) + 1,
                )
            )
        out.append(SearchResult(query, items, {}, _search_warnings(res, text, items, evidence, cross_modal)))
    return out


def _search_warnings(
    res: Resources, text: str | None, items: list[SearchHit], evidence: Evidence, cross_modal: bool
) -> list[str]:
    """Unknown words and cut texts; nothing in the index matching the text well."""
    if text is None:
        return []
    warnings = text_warnings([text], res.lexicon, *res.token_counts([text]))
    if cross_modal and evidence.usable and items:
        warnings += [w for w in [no_match_warning(text, items[0].score, evidence.calibration)] if w]
    return warnings
