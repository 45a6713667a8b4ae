"""Plain retrieval by text or by image over one collection of the index, scored like every answer (the
model's pair score; p(match) where the pair is an image and a text)."""

from __future__ import annotations

import dataclasses

import numpy as np

from counterclip.engine.posing import make_side
from counterclip.engine.request import ImageQuery, encode_text, resolve_image
from counterclip.engine.resources import Resources
from counterclip.engine.results import ResultItem, SearchResult
from counterclip.engine.timing import Stopwatch
from counterclip.engine.verdicts import Evidence, no_match_warning, text_warnings
from counterclip.errors import InputError

COLLECTIONS = ("images", "captions")


def check_search(text: str | None, image: ImageQuery | None, k: int, collection: str) -> None:
    """Raise `InputError` naming what is wrong with a search before any work is done."""
    if (text is None) == (image is None):
        raise InputError("give exactly one of text or image to search by")
    if collection not in COLLECTIONS:
        raise InputError(f"collection must be images or captions, got {collection!r}")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive number of results, got {k!r}")


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
    exclude = None
    if text is not None:
        query_vec, query = encode_text(res.encoder, text), {"text": text}
    else:
        resolved = resolve_image(res.index, res.encoder, image)
        query_vec, query = resolved.vector, resolved.described
        exclude = resolved.id if collection == "images" else None
    watch.lap("encode")
    side_name = "image" if collection == "images" else "text"
    opts = dataclasses.replace(res.defaults, where=where) if where else res.defaults
    side = make_side(res, side_name, query_vec, exclude, text or "", opts)
    scores, ids = side.collection.search(query_vec[None].astype(np.float32), k + (exclude is not None))
    cross_modal = (text is not None) == (collection == "images")  # an image-text pair: p(match) applies
    evidence = res.evidence(res.defaults.calibration) if cross_modal else Evidence(None)
    items = []
    for score, item_id in zip(scores[0], ids[0], strict=True):
        if item_id < 0 or int(item_id) == exclude:
            continue
        item = side.item(int(item_id))
        item.score_after = float(res.pair_score.of_cos(float(score)))
        item.p_match = evidence.p_match(item.score_after) if evidence.usable else None
        item.distance = float(1.0 - score)
        item.rank = len(items) + 1
        items.append(item)
        if len(items) == k:
            break
    watch.lap("search")
    warnings = _search_warnings(res, text, items, evidence, cross_modal)
    return SearchResult(query, items, watch.total(), warnings)


def _search_warnings(
    res: Resources, text: str | None, items: list[ResultItem], evidence: Evidence, cross_modal: bool
) -> list[str]:
    """Unknown words and cut texts; nothing in the index matching the text well."""
    if text is None:
        return []
    warnings = text_warnings([text], res.lexicon, *res.token_counts([text]))
    if cross_modal and evidence.usable and items:
        warnings += [w for w in [no_match_warning(text, items[0].score_after, evidence.calibration)] if w]
    return warnings
