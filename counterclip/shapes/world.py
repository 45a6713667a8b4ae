"""The shapes world: one rendered object per image, every attribute known.

An image shows one object described by a :class:`ShapeAttrs` (shape, colour, size, position, background),
drawn with small random rotation, placement jitter and colour jitter so that no two images are the same.
Captions are built from a fixed grammar (:func:`caption`) and can be parsed back (:func:`parse_caption`),
which is what makes counterfactual and attribution quality measurable later on.

A fixed set of (shape, colour) pairs, :data:`HOLDOUT`, is never used for training; ``holdout_only``
generation produces only those, for compositional tests.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")
BACKGROUNDS: tuple[str, ...] = ("dark", "light", "noisy")
ATTRIBUTES: tuple[str, ...] = ("shape", "colour", "size", "position", "background")

#: Allowed values per attribute, in the order of :data:`ATTRIBUTES`.
VALUES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": COLOURS,
    "size": SIZES,
    "position": POSITIONS,
    "background": BACKGROUNDS,
}

#: (shape, colour) pairs never used for training (3 of 30 = 10%). Each shape and each colour appears in
#: at most one pair, so every held-out pair combines a shape and a colour that training saw elsewhere.
HOLDOUT: tuple[tuple[str, str], ...] = (("circle", "blue"), ("triangle", "orange"), ("star", "green"))

#: The attributes a "full caption" names, in caption order (background is left out on purpose: it is
#: the easiest attribute and would only multiply the number of candidate captions by three).
FULL_CAPTION: tuple[str, ...] = ("size", "colour", "shape", "position")

#: Phrase templates wrapped around the noun phrase ("a red circle"); "{}" is the bare noun phrase.
TEMPLATES: tuple[str, ...] = (
    "{}",
    "a photo of {}",
    "an image of {}",
    "a picture of {}",
    "a rendering of {}",
)

# Nominal RGB per colour; each image jitters every channel by up to +-_COLOUR_JITTER. The colours are
# far enough apart (>= 80 on some channel) that jitter never makes one look like another.
RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 170, 60),
    "blue": (35, 75, 225),
    "yellow": (235, 210, 35),
    "purple": (140, 55, 190),
    "orange": (245, 135, 25),
}
_COLOUR_JITTER = 18

# Centre of each position region as a fraction of the image side (x, y); jittered by +-_POSITION_JITTER.
_POSITION_CENTRES: dict[str, tuple[float, float]] = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "center": (0.5, 0.5),
}
_POSITION_JITTER = 0.04
# Object "radius" as a fraction of the image side; the ranges are disjoint with a clear gap (x1.7).
_RADIUS_RANGE: dict[str, tuple[float, float]] = {"small": (0.085, 0.105), "large": (0.165, 0.19)}
_MAX_ROTATION_DEG = 15.0

_POSITION_PHRASES: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
_BACKGROUND_PHRASE = "on a {} background"
_GENERIC_NOUN = "object"  # used when a caption does not name the shape


@dataclass(frozen=True)
class ShapeAttrs:
    """The attributes of the one object in a shapes-world image."""

    shape: str  # one of SHAPES
    colour: str  # one of COLOURS
    size: str  # one of SIZES
    position: str  # one of POSITIONS
    background: str  # one of BACKGROUNDS

    def __post_init__(self) -> None:
        for name in ATTRIBUTES:
            value = getattr(self, name)
            if value not in VALUES[name]:
                raise ValueError(f"unknown {name} {value!r}; expected one of {VALUES[name]}")

    def replace(self, **changes: str) -> ShapeAttrs:
        """Return a copy with some attributes changed (validated)."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, str]:
        """Attribute name -> value, in the order of ATTRIBUTES."""
        return {name: getattr(self, name) for name in ATTRIBUTES}

    @property
    def is_holdout(self) -> bool:
        """Whether the (shape, colour) pair is one of HOLDOUT."""
        return (self.shape, self.colour) in HOLDOUT


def seen_pairs() -> list[tuple[str, str]]:
    """All (shape, colour) pairs that are not held out, in SHAPES x COLOURS order."""
    return [(s, c) for s in SHAPES for c in COLOURS if (s, c) not in HOLDOUT]


def sample_attrs(
    rng: np.random.Generator, holdout_only: bool = False, include_holdout: bool = False
) -> ShapeAttrs:
    """Draw attributes uniformly: (shape, colour) from the seen pairs, HOLDOUT, or all pairs.

    Args:
        rng: the random generator (advanced by this call).
        holdout_only: draw (shape, colour) only from HOLDOUT.
        include_holdout: draw (shape, colour) from all pairs (ignored when ``holdout_only``).
    """
    if holdout_only:
        pairs = list(HOLDOUT)
    elif include_holdout:
        pairs = [(s, c) for s in SHAPES for c in COLOURS]
    else:
        pairs = seen_pairs()
    shape, colour = pairs[int(rng.integers(len(pairs)))]
    return ShapeAttrs(
        shape=shape,
        colour=colour,
        size=SIZES[int(rng.integers(len(SIZES)))],
        position=POSITIONS[int(rng.integers(len(POSITIONS)))],
        background=BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))],
    )


# ----------------------------------------------------------------------------------------------- rendering


def _background(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A grey (R == G == B) background as a (size, size, 3) uint8 array."""
    if kind == "dark":
        grey = np.full((size, size), rng.uniform(15, 55))
    elif kind == "light":
        grey = np.full((size, size), rng.uniform(195, 240))
    else:  # noisy: mid grey with strong per-pixel noise
        grey = rng.uniform(95, 155) + rng.uniform(-50, 50, size=(size, size))
    grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _polygon(shape: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape centred at (cx, cy), rotated by ``angle`` radians."""
    if shape == "square":
        half = radius * 0.85  # a square of "radius" r would look much bigger than the circle of radius r
        points = [(-half, -half), (half, -half), (half, half), (-half, half)]
    elif shape == "triangle":
        r = radius * 1.15
        points = [
            (r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))
        ]
    elif shape == "star":
        outer, inner = radius * 1.15, radius * 0.5
        points = [
            ((outer if k % 2 == 0 else inner) * math.cos(a), (outer if k % 2 == 0 else inner) * math.sin(a))
            for k, a in ((k, -math.pi / 2 + k * math.pi / 5) for k in range(10))
        ]
    elif shape == "cross":
        r, w = radius, radius * 0.34
        points = [
            (-w, -r),
            (w, -r),
            (w, -w),
            (r, -w),
            (r, w),
            (w, w),
            (w, r),
            (-w, r),
            (-w, w),
            (-r, w),
            (-r, -w),
            (-w, -w),
        ]
    else:
        raise ValueError(f"not a polygon shape: {shape!r}")
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in points]


def render(
    attrs: ShapeAttrs, rng: np.random.Generator, size: int = 128, rgb: tuple[int, int, int] | None = None
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Render one image of the object described by ``attrs``.

    Args:
        attrs: the object's attributes.
        rng: random generator for jitter (placement, radius, rotation, colour, background); advanced.
        size: side of the square RGB image in pixels. Default 128.
        rgb: paint the object in this exact colour instead of a jittered ``attrs.colour`` (training uses it
            for objects of unnamed colours). Default None.

    Returns:
        ``(image, bbox)``: the PIL RGB image and the object's bounding box ``(x0, y0, x1, y1)`` in pixels,
        with ``x1``/``y1`` exclusive (PIL ``getbbox`` convention), computed from the drawn mask.

    Examples::

        image, bbox = render(ShapeAttrs("circle", "red", "large", "left", "dark"), np.random.default_rng(0))
    """
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    image = Image.fromarray(_background(attrs.background, rng, size))

    fx, fy = _POSITION_CENTRES[attrs.position]
    cx = (fx + rng.uniform(-_POSITION_JITTER, _POSITION_JITTER)) * size
    cy = (fy + rng.uniform(-_POSITION_JITTER, _POSITION_JITTER)) * size
    radius = rng.uniform(*_RADIUS_RANGE[attrs.size]) * size
    angle = math.radians(rng.uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG))
    jitter = rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, size=3)
    colour = (
        tuple(int(v) for v in np.clip(np.array(RGB[attrs.colour]) + jitter, 0, 255)) if rgb is None else rgb
    )

    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    if attrs.shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=255)
    else:
        draw.polygon(_polygon(attrs.shape, cx, cy, radius, angle), fill=255)
    image.paste(colour, (0, 0, size, size), mask)
    bbox = mask.getbbox()
    assert bbox is not None, "the object must be visible"
    return image, bbox


# ------------------------------------------------------------------------------------------------ captions


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(attrs: ShapeAttrs, named: Sequence[str], template: str = "{}") -> str:
    """The canonical caption naming exactly the attributes in ``named`` (in a fixed word order).

    Args:
        attrs: the object's attributes.
        named: which attributes to name (any subset of ATTRIBUTES, any order; must not be empty).
        template: one of TEMPLATES, wrapped around the noun phrase. Default "{}" (bare noun phrase).

    Returns:
        e.g. ``"a large red circle on the left"`` for named = size, colour, shape, position;
        ``"an orange object on a dark background"`` for colour, background.

    Examples::

        caption(ShapeAttrs("circle", "red", "large", "left", "dark"), ["colour", "shape"])  # "a red circle"
    """
    unknown = set(named) - set(ATTRIBUTES)
    if unknown or not named:
        raise ValueError(f"named must be a non-empty subset of {ATTRIBUTES}, got {list(named)}")
    words = [getattr(attrs, a) for a in ("size", "colour") if a in named]
    words.append(attrs.shape if "shape" in named else _GENERIC_NOUN)
    phrase = " ".join([_article(words[0]), *words])
    if "position" in named:
        phrase += " " + _POSITION_PHRASES[attrs.position]
    if "background" in named:
        phrase += " " + _BACKGROUND_PHRASE.format(attrs.background)
    return template.format(phrase)


_POSITION_BY_PHRASE = {phrase: value for value, phrase in _POSITION_PHRASES.items()}
_WORD = re.compile(r"[a-z]+")


def parse_caption(text: str) -> dict[str, str]:
    """Which attributes a caption names, and their values: the inverse of :func:`caption`.

    Robust to every template in TEMPLATES, to case and punctuation. Attributes the caption does not name
    are absent from the result.

    Examples::

        parse_caption("A photo of a large red circle on the left.")
        # {"shape": "circle", "colour": "red", "size": "large", "position": "left"}
    """
    lowered = text.lower()
    words = _WORD.findall(lowered)
    result: dict[str, str] = {}
    for attribute in ("shape", "colour", "size"):
        hits = [w for w in words if w in VALUES[attribute]]
        if hits:
            result[attribute] = hits[0]
    normalised = " ".join(words)
    for phrase, value in _POSITION_BY_PHRASE.items():
        if phrase in normalised:
            result["position"] = value
            break
    for value in BACKGROUNDS:
        if f"{value} background" in normalised:
            result["background"] = value
            break
    return {a: result[a] for a in ATTRIBUTES if a in result}


def attribute_prompts(attribute: str) -> dict[str, list[str]]:
    """Zero-shot prompts naming only ``attribute``: value -> one prompt per template in TEMPLATES.

    Examples::

        attribute_prompts("colour")["red"][:2]  # ["a red object", "a photo of a red object"]
    """
    if attribute not in ATTRIBUTES:
        raise ValueError(f"unknown attribute {attribute!r}; expected one of {ATTRIBUTES}")
    base = ShapeAttrs(SHAPES[0], COLOURS[0], SIZES[0], POSITIONS[0], BACKGROUNDS[0])
    return {
        value: [caption(base.replace(**{attribute: value}), [attribute], t) for t in TEMPLATES]
        for value in VALUES[attribute]
    }


#: Attribute subsets the sidecar captions of :func:`generate_folder` draw from, with their weights.
_SIDECAR_SUBSETS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("size", "colour", "shape", "position"), 0.35),
    (("size", "colour", "shape", "position", "background"), 0.2),
    (("colour", "shape"), 0.15),
    (("size", "colour", "shape"), 0.1),
    (("colour", "shape", "position"), 0.1),
    (("colour", "shape", "background"), 0.1),
)


def random_caption(attrs: ShapeAttrs, rng: np.random.Generator) -> str:
    """A caption from a varied template naming a random attribute subset (used for sidecar .txt files)."""
    weights = np.array([w for _, w in _SIDECAR_SUBSETS])
    subset = _SIDECAR_SUBSETS[int(rng.choice(len(_SIDECAR_SUBSETS), p=weights / weights.sum()))][0]
    return caption(attrs, subset, TEMPLATES[int(rng.integers(len(TEMPLATES)))])


# ----------------------------------------------------------------------------------------------- folders

LABELS_FILE = "labels.jsonl"


def parse_exclusion(text: str) -> dict[str, str]:
    """``"colour=blue,shape=circle"`` -> ``{"colour": "blue", "shape": "circle"}`` (checked against the world).

    Raises:
        ValueError: an unknown attribute or value, or a malformed pair (the message names it).
    """
    combination: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        attribute, sep, value = (x.strip() for x in part.partition("="))
        if not sep or attribute not in VALUES:
            raise ValueError(f"{part!r}: expected ATTRIBUTE=VALUE with ATTRIBUTE one of {', '.join(VALUES)}")
        if value not in VALUES[attribute]:
            raise ValueError(f"{part!r}: {attribute} is one of {', '.join(VALUES[attribute])}")
        combination[attribute] = value
    if not combination:
        raise ValueError(f"{text!r}: empty combination")
    return combination


def _excluded(attrs: ShapeAttrs, exclude: Sequence[dict[str, str]]) -> bool:
    return any(all(getattr(attrs, a) == v for a, v in combination.items()) for combination in exclude)


def generate_folder(
    out_dir: str | os.PathLike[str],
    n: int,
    seed: int,
    size: int = 128,
    holdout_only: bool = False,
    exclude: Sequence[dict[str, str]] = (),
) -> list[dict]:
    """Write ``n`` shapes images with captions and labels to ``out_dir``; deterministic for ``seed``.

    Writes ``NNNNNN.png``, ``NNNNNN.txt`` (one caption) and ``labels.jsonl`` (one JSON object per image:
    file, shape, colour, size, position, background, bbox [x0, y0, x1, y1] with x1/y1 exclusive,
    caption). The (shape, colour) pairs are the seen ones, or only HOLDOUT with ``holdout_only``.

    Args:
        out_dir: the directory (created if missing).
        n: number of images (>= 1).
        seed: random seed; the same seed gives the same bytes.
        size: image side in pixels. Default 128.
        holdout_only: generate only held-out (shape, colour) pairs. Default False.
        exclude: attribute combinations never generated (``[{"colour": "blue", "shape": "square"}]``: no
            blue squares), to test what an index that lacks them answers. Default none.

    Returns:
        The label records, in file order.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width = max(6, len(str(n - 1)))
    records: list[dict] = []
    for i in range(n):
        attrs = sample_attrs(rng, holdout_only=holdout_only)
        for _ in range(1000):
            if not _excluded(attrs, exclude):
                break
            attrs = sample_attrs(rng, holdout_only=holdout_only)
        else:
            raise ValueError("the exclusions leave no combination to generate")
        image, bbox = render(attrs, rng, size)
        text = random_caption(attrs, rng)
        stem = f"{i:0{width}d}"
        image.save(out / f"{stem}.png", format="PNG")
        (out / f"{stem}.txt").write_text(text + "\n", encoding="utf-8")
        records.append({"file": f"{stem}.png", **attrs.as_dict(), "bbox": list(bbox), "caption": text})
    tmp = out / (LABELS_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record) + "\n")
    os.replace(tmp, out / LABELS_FILE)  # a half-written labels file is never left under the real name
    return records


def read_labels(path: str | os.PathLike[str]) -> list[dict]:
    """Read a ``labels.jsonl`` file (or the one inside a directory) into a list of records."""
    p = Path(path)
    if p.is_dir():
        p = p / LABELS_FILE
    with open(p, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def attrs_of(record: dict) -> ShapeAttrs:
    """The ShapeAttrs of a label record."""
    return ShapeAttrs(**{a: record[a] for a in ATTRIBUTES})


def vocabulary() -> list[str]:
    """Canonical captions for every combination of the caption subsets the shapes world uses.

    Added to an index with ``--vocab`` they give the text side a caption for every one-attribute change.
    """
    subsets = [
        ("size", "colour", "shape", "position"),
        ("colour", "shape"),
        ("size", "colour", "shape"),
        ("colour", "shape", "position"),
        ("colour", "shape", "background"),
        ("size", "colour", "shape", "position", "background"),
    ]
    texts: list[str] = []
    for subset in subsets:
        for values in itertools.product(*(VALUES[a] for a in subset)):
            base = ShapeAttrs("circle", "red", "small", "center", "dark").replace(
                **dict(zip(subset, values, strict=True))
            )
            texts.append(caption(base, subset))
    return list(dict.fromkeys(texts))
