"""Stage 1, resolve: what a query asks, checked, and its image embedded (decoded from the file the way the
index decoded its images, or read from the index when the image is indexed)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from counterclip.engine.criteria import MODES
from counterclip.engine.options import EngineOptions
from counterclip.engine.resources import IndexLike, Resources
from counterclip.engine.sides import SIDES, as_array
from counterclip.engine.verdicts import VERIFIERS
from counterclip.errors import InputError
from counterclip.index_builder.decode import DecodeError, LoadedImage
from counterclip.index_builder.decode import load_image as decode_image

ImageQuery = str | Path | Image.Image | int  # a path, a PIL image, or an index id


@dataclass(frozen=True)
class Asked:
    """What a counterfactual query asks, as given (checked by `check_asked`)."""

    image: ImageQuery
    text: str | None
    side: str
    mode: str
    labels: Sequence[str] | None
    target: str | None


@dataclass(frozen=True)
class QueryImage:
    """The query image, embedded: its vector, its index id (when indexed) and how it was given."""

    vector: np.ndarray  # (d,)
    id: int | None
    described: dict[str, Any]
    sha256: str | None = None  # the file's content hash (an indexed image's, or the query file's)


#: Control characters (C0 and C1, DEL) other than tab, line feed and carriage return: no caption holds
#: them, and a tokenizer drops or mangles them silently.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def control_character(text: str) -> str | None:
    """Why ``text`` is refused as query text (a control character, named with its position), or None."""
    found = _CONTROL.search(text)
    if found is None:
        return None
    return f"holds a control character (U+{ord(found.group()):04X} at position {found.start()})"


def check_text(field: str, text: str | None) -> None:
    """Raise `InputError` when a query text holds a control character (e.g. a NUL)."""
    reason = control_character(text) if isinstance(text, str) else None
    if reason is not None:
        raise InputError(f"{field} {reason}; query text is plain text")


def check_asked(asked: Asked, opts: EngineOptions, res: Resources) -> None:
    """Raise `InputError` naming what is wrong with a query before any work is done."""
    side, mode, text = asked.side, asked.mode, asked.text
    check_text("text", text)
    check_text("target", asked.target)
    for i, label in enumerate(asked.labels or []):
        check_text(f"labels[{i}]", label)
    if side not in SIDES:
        raise InputError(f"side must be one of {', '.join(SIDES)}, got {side!r}")
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if opts.k < 1:
        raise InputError(f"k must be at least 1, got {opts.k}")
    if mode == "flip" and side != "image":
        raise InputError("mode flip works on the image side only (it flips the image's predicted label)")
    if mode != "flip" and text is None:
        raise InputError("text is required for modes increase and decrease")
    if opts.verify_with is not None and opts.verify_with not in VERIFIERS:
        raise InputError(f"verify_with must be one of {', '.join(VERIFIERS)}, got {opts.verify_with!r}")
    head = getattr(res.model, "match_head", None)
    if opts.verify_with is not None and (head is None or head([], []) is None):
        raise InputError(
            f"--verify-with {opts.verify_with} needs a model with an image-text matching head (BLIP); "
            f"{res.model.spec} ({getattr(res.model, 'family', 'clip')}) has none"
        )
    if side == "text" and res.index.captions.count == 0:
        raise InputError(
            "this index holds no captions: the text side needs a caption index "
            "(build with --vocab, --captions, or sidecar .txt files)"
        )


@dataclass(frozen=True)
class Resolved:
    """Stage 1's output: the query as asked (checked) and its image embedded."""

    asked: Asked
    image: QueryImage


def resolve(res: Resources, opts: EngineOptions, **asked: Any) -> Resolved:
    """Stage 1: check the query (`check_asked`; ``asked`` are the fields of `Asked`) and embed its image."""
    checked = Asked(**asked)
    check_asked(checked, opts, res)
    return Resolved(checked, resolve_image(res.index, res.encoder, checked.image))


def decode_as_indexed(index: IndexLike, path: str | Path) -> LoadedImage:
    """Decode a file exactly as the index decoded its images (same limits and JPEG scaling), so a
    re-encoded indexed file reproduces its stored vector."""
    index_loader = getattr(index, "load_image", None)
    return index_loader(path) if index_loader is not None else decode_image(path)


def indexed_image(index: IndexLike, path: str | Path) -> Image.Image | None:
    """The upright RGB image of a file as the index decoded it; None when missing or unreadable."""
    try:
        return decode_as_indexed(index, path).image
    except DecodeError:
        return None


def encode_text(encoder: Any, text: str) -> np.ndarray:
    """``(d,)`` normalised embedding of a non-empty text."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("text is empty: give the caption to score, e.g. --text 'a photo of a dog'")
    check_text("text", text)
    return as_array(encoder.encode_texts([text.strip()]))[0]


def resolve_image(index: IndexLike, encoder: Any, image: ImageQuery) -> QueryImage:
    """Embed a query image given as a path, a PIL image, or an index id."""
    if isinstance(image, (int, np.integer)) and not isinstance(image, bool):
        try:
            vector = index.images.vectors([int(image)])[0]
            meta = index.images.meta([int(image)])[0]
        except KeyError:
            raise InputError(f"image id {int(image)} is not in the index") from None
        return QueryImage(vector, int(image), {"id": int(image), "path": meta["path"]}, meta.get("sha256"))
    if isinstance(image, Image.Image):
        # the builder's rules (EXIF orientation, alpha on white, 16-bit scaling, shrinking): a PIL copy
        # of an indexed file embeds like the file did
        decode_query = getattr(index, "decode_query", None)
        try:
            pil = decode_query(image).model_input if decode_query is not None else image.convert("RGB")
        except DecodeError as exc:
            raise InputError(f"query image is not usable: {exc}") from exc
        return QueryImage(as_array(encoder.encode_pil([pil]))[0], None, {"pil": True})
    path = Path(image).expanduser()
    if not path.is_file():
        raise InputError(f"query image not found: {path}")
    try:
        # absolute: the index resolves relative paths against its own root, a user means the cwd
        decoded = decode_as_indexed(index, path.resolve())
    except DecodeError as exc:
        raise InputError(f"query image {path} is not a readable image: {exc}") from exc
    indexed = index.image_id_for_path(path.resolve())
    vector = as_array(encoder.encode_pil([decoded.model_input]))[0]
    return QueryImage(vector, indexed, {"path": str(path), "id": indexed}, decoded.sha256)


def query_pil(index: IndexLike, image: ImageQuery) -> Image.Image | None:
    """The query image itself (a path is the user's, relative to the working directory)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (int, np.integer)):
        return indexed_image(index, index.images.meta([int(image)])[0]["path"])
    return indexed_image(index, Path(image).expanduser().resolve())


def load_image(path: str | Path) -> Image.Image | None:
    """The upright RGB image of a file, decoded exactly as the index builder decodes it (so a re-encoded
    file is comparable with its stored vector); None if it is missing or unreadable."""
    try:
        return decode_image(path).image
    except DecodeError:
        return None
