"""Search for retrieval apps over HTTP: by vectors (faiss-like) and by a batch of texts, images or vectors
(``POST /search/vectors``, ``POST /search/batch``), the `Engine` calls of the same names; and the library's
own message for a keyword a query does not take."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter
from pydantic import Field, StrictInt

from counterclip.engine.keywords import known_keywords, not_served, unknown_keywords
from counterclip.errors import InputError
from counterclip.server.schemas import ImageRef, Strict, Text

MAX_QUERIES = 256  # query vectors or texts per request
MAX_IMAGES = 32  # uploaded or indexed query images per request
#: The query call each route answers, for the unknown-keyword message.
ROUTE_CALLS = {
    "/search": "search",
    "/search/vectors": "search_vectors",
    "/search/batch": "search_batch",
    "/counterfactual": "counterfactuals",
}

Vector = Annotated[list[float], Field(min_length=1, max_length=16384)]
K = Annotated[StrictInt, Field(ge=1, le=1000)]


class VectorSearchRequest(Strict):
    vectors: Annotated[list[Vector], Field(min_length=1, max_length=MAX_QUERIES)]
    k: K = 10
    collection: Literal["images", "captions"] = "images"


class BatchSearchRequest(Strict):
    texts: Annotated[list[Text], Field(min_length=1, max_length=MAX_QUERIES)] | None = None
    images: Annotated[list[ImageRef], Field(min_length=1, max_length=MAX_IMAGES)] | None = None
    vectors: Annotated[list[Vector], Field(min_length=1, max_length=MAX_QUERIES)] | None = None
    k: K = 10
    collection: Literal["images", "captions"] = "images"


def unknown_keyword_error(path: str, names: set[str]) -> InputError | None:
    """The library's error for body keys a query route does not take (None for other routes): a setting
    the engine has but the service does not take per request, or a keyword nobody takes."""
    call = ROUTE_CALLS.get(path.rstrip("/"))
    if call is None:
        return None
    unknown = names - set(known_keywords(call))
    if unknown:
        return unknown_keywords(call, unknown)
    return not_served(names) if call == "counterfactuals" else None


def _finite(array: np.ndarray) -> list[list[float | None]]:
    """JSON rows: NaN and infinities (the padding of a short row) become null."""
    return [
        [float(v) if np.isfinite(v) else None for v in row] for row in np.asarray(array, dtype=np.float64)
    ]


def search_vectors(service: Any, request: VectorSearchRequest) -> dict[str, Any]:
    """``Engine.search_vectors``: ``similarities``, ``ids`` and ``scores`` per query (null / -1 padded)."""
    with service.pinned():
        hits = service.engine.search_vectors(request.vectors, k=request.k, collection=request.collection)
    return {
        "similarities": _finite(hits.similarities),
        "ids": hits.ids.tolist(),
        "scores": _finite(hits.scores),
    }


def search_batch(service: Any, request: BatchSearchRequest) -> dict[str, Any]:
    """``Engine.search_batch``: one search result per query, each with ``images`` describing its hits."""
    with service.pinned():
        for i, text in enumerate(request.texts or []):
            service._check_text(f"texts[{i}]", text)
        images = [service.query_image(ref) for ref in request.images] if request.images is not None else None
        results = service.engine.search_batch(
            texts=request.texts,
            images=images,
            vectors=request.vectors,
            k=request.k,
            collection=request.collection,
        )
        out = []
        for result in results:
            payload = result.to_dict()
            payload["images"] = service.describe([i.id for i in result.items if i.kind == "image"])
            out.append(payload)
    return {"results": out}


def add_batch_routes(router: APIRouter, service: Any) -> None:
    """``POST /search/vectors`` and ``POST /search/batch``, run on the worker pool."""

    @router.post("/search/vectors", tags=["queries"])
    async def vectors(request: VectorSearchRequest) -> dict[str, Any]:
        """Faiss-like search by embeddings (``(nq, d)``, normalised by the service): per query the ``k``
        nearest ids, their cosines (``similarities``) and pair scores, best first."""
        return await service.pool.run(search_vectors, service, request)

    @router.post("/search/batch", tags=["queries"])
    async def batch(request: BatchSearchRequest) -> dict[str, Any]:
        """Plain retrieval for a batch of queries: exactly one of ``texts``, ``images`` or ``vectors``."""
        return await service.pool.run(search_batch, service, request)
