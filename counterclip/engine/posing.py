"""Stage 2, pose: which side moves (the image through the index's images, or the text through its
captions) and what it must achieve (the criterion of the mode, with the index's best and typical scores)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from counterclip.engine.criteria import Criterion, Decrease, Flip, Increase, check_labels, check_target
from counterclip.engine.options import EngineOptions
from counterclip.engine.request import ImageQuery, Resolved, decode_as_indexed, encode_text
from counterclip.engine.resources import Resources
from counterclip.engine.sides import CaptionSide, CollectionLike, ImageSide, Side, as_array
from counterclip.errors import InputError
from counterclip.index_builder.stores.store_collection import restricted


@dataclass(frozen=True)
class Posed:
    """A query ready to search: the moving side, the criterion, the query in words, its texts."""

    side: Side
    criterion: Criterion
    query: dict[str, Any]  # what the query was (image path/id, text, labels, target, prediction)
    texts: list[str]  # the texts the scores depend on (the text, or the flip labels)
    image: ImageQuery  # the query image as given (the second verifier scores the pair from it)


def make_side(
    res: Resources,
    name: str,
    start: np.ndarray,
    query_id: int | None,
    text: str,
    opts: EngineOptions,
    query_sha256: str | None = None,
    asked: tuple[str, str] = ("", ""),
) -> Side:
    """The side named ``name`` (``image`` or ``text``) starting at ``start``; ``asked``: the texts whose
    words an image answer should gain and lose (the order of the image side's answers)."""
    for field_name, value, choices in (
        ("image_proximity", opts.image_proximity, ("readings", "embedding")),
        ("text_proximity", opts.text_proximity, ("words", "embedding")),
    ):
        if value not in choices:
            raise InputError(f"{field_name} must be {' or '.join(choices)}, got {value!r}")
    if name == "image":
        decode = functools.partial(decode_as_indexed, res.index)  # this query's generation
        images = restricted(res.index.images, opts.where)  # --where: the candidates that pass it
        # no reader without captions naming substitutes, or where the model's readings of the index do
        # not hold (an untrained model, captions unrelated to the images: the order would follow noise)
        reader = res.caption_reader if opts.image_proximity == "readings" else None
        return ImageSide(
            images, start, query_id, res.encoder, decode, query_sha256, reader, opts.reading_pool, asked
        )
    if opts.where:
        raise InputError("--where restricts images; the text side moves through captions (drop --where)")
    return CaptionSide(res.index.captions, start, text, res.encoder, opts.text_proximity == "words")


def pose(res: Resources, resolved: Resolved, opts: EngineOptions) -> Posed:
    """Encode the rest of the query; the moving side, the criterion and the query's description."""
    image, asked = resolved.image, resolved.asked
    if asked.mode == "flip":
        return _pose_flip(res, resolved, opts)
    text_vec = encode_text(res.encoder, asked.text)
    if asked.side == "image":
        wanted = (asked.text, "") if asked.mode == "increase" else ("", asked.text)
        moving = make_side(res, "image", image.vector, image.id, asked.text, opts, image.sha256, wanted)
        fixed = text_vec
    else:
        moving = make_side(res, "text", text_vec, None, asked.text, opts)
        fixed = image.vector
    best, typical = best_and_typical(res, moving.collection, fixed)
    margin = opts.match_margin if asked.mode == "increase" else opts.nomatch_margin
    build = Increase.build if asked.mode == "increase" else Decrease.build
    criterion = build(res.pair_score, fixed, moving.start, best, typical, margin, opts.threshold)
    query = {"image": image.described, "text": asked.text}
    return Posed(moving, criterion, query, [asked.text], asked.image)


def _pose_flip(res: Resources, resolved: Resolved, opts: EngineOptions) -> Posed:
    """Flip: the image moves until the zero-shot prediction over the labels becomes the target."""
    image = resolved.image
    labels = check_labels(resolved.asked.labels)
    label_vecs = as_array(res.encoder.encode_texts(labels))
    probabilities = res.pair_score.label_probabilities(image.vector[None], label_vecs)[0]
    target = check_target(labels, resolved.asked.target, probabilities)
    criterion = Flip.build(res.pair_score, image.vector, labels, label_vecs, target)
    query = {
        "image": image.described,
        "labels": labels,
        "target": target,
        "target_chosen": resolved.asked.target is None,  # the most likely label other than the prediction
        "predicted": labels[int(np.argmax(probabilities))],
        "class_probabilities": dict(zip(labels, map(float, probabilities), strict=True)),
    }
    side = make_side(
        res, "image", image.vector, image.id, "", opts, image.sha256, (target, query["predicted"])
    )
    return Posed(side, criterion, query, list(labels), resolved.asked.image)


def best_and_typical(res: Resources, collection: CollectionLike, fixed: np.ndarray) -> tuple[float, float]:
    """The best score the collection holds against ``fixed`` and the median over a sample of it."""
    best_cos, _ = collection.search(fixed[None].astype(np.float32), 1)
    best = res.pair_score.of_cos(float(best_cos[0, 0]))
    typical = res.pair_score.of_cos(float(np.median(res.typical_sample(collection) @ fixed)))
    return best, typical
