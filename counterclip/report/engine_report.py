"""The report of one engine result, written from what the engine holds: its model and index (maps over
the files as the index decodes them), the captions the index links to each image, and the pair score.

Takes the engine by duck type (``model``, ``index``, ``indexed_image``, ``pair_score``): the report layer
sits below the engine and never imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from counterclip.report.counterfactual import counterfactual_maps, write_counterfactual_report

MOST_CAPTIONS = 3  # captions shown under one picture


def captions_of(
    index: Any, image_ids: Iterable[int | None], most: int = MOST_CAPTIONS
) -> dict[int, list[str]]:
    """The captions the index links to each image id (sidecars, captions files), at most ``most`` each;
    an index that keeps none (a vector store without captions) gives none."""
    ids = [int(i) for i in image_ids if i is not None]
    texts_of_images = getattr(getattr(index, "captions", None), "texts_of_images", None)
    if not ids or texts_of_images is None:
        return {}
    return {image_id: texts[:most] for image_id, texts in texts_of_images(ids).items()}


def report_of_result(
    engine: Any,
    result: Any,
    path: Path,
    query_image: Any = None,
    with_maps: bool = True,
    quality: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the self-contained HTML report of ``result`` to ``path``, with each answer's attribution maps
    (``quality``: and each map's quality card); ``progress(done, total)`` after each answer's maps."""
    maps = None
    if with_maps:
        maps = counterfactual_maps(
            engine.model, result, engine.index.root, query_image, engine.indexed_image, progress=progress,
            quality=quality,
        )  # fmt: skip
    ids = [item.id for item in result.items] + [i.id for items in result.baselines.values() for i in items]
    query_id = (result.query.get("image") or {}).get("id")
    captions = captions_of(engine.index, [*ids, query_id]) if result.side == "image" else {}
    query_captions = captions_of(engine.index, [query_id]).get(query_id, []) if query_id is not None else []
    return write_counterfactual_report(
        path, result, engine.index.root, query_image, maps, captions=captions, query_captions=query_captions,
        score=engine.pair_score,
    )  # fmt: skip
