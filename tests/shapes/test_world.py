"""The shapes-world generator: determinism, labels that match the pixels, and the caption grammar."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from counterclip.shapes import (
    ATTRIBUTES,
    BACKGROUNDS,
    COLOURS,
    HOLDOUT,
    POSITIONS,
    SHAPES,
    SIZES,
    TEMPLATES,
    VALUES,
    ShapeAttrs,
    attribute_prompts,
    attrs_of,
    caption,
    generate_folder,
    parse_caption,
    random_caption,
    read_labels,
    render,
    sample_attrs,
)
from counterclip.shapes.world import RGB, seen_pairs

A = ShapeAttrs(shape="circle", colour="red", size="large", position="left", background="dark")


def _all_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_public_vocabulary() -> None:
    assert {"circle", "square", "triangle", "star", "cross"} <= set(SHAPES)
    assert {"red", "green", "blue", "yellow", "purple", "orange"} <= set(COLOURS)
    assert SIZES == ("small", "large")
    assert POSITIONS == ("left", "right", "top", "bottom", "center")
    assert BACKGROUNDS == ("dark", "light", "noisy")
    assert ATTRIBUTES == ("shape", "colour", "size", "position", "background")
    n_pairs = len(SHAPES) * len(COLOURS)
    assert 0.05 <= len(HOLDOUT) / n_pairs <= 0.15
    assert all(s in SHAPES and c in COLOURS for s, c in HOLDOUT)
    assert len(seen_pairs()) == n_pairs - len(HOLDOUT)


def test_attrs_validate_and_replace() -> None:
    with pytest.raises(ValueError, match="colour"):
        ShapeAttrs(shape="circle", colour="teal", size="large", position="left", background="dark")
    assert A.replace(colour="blue").colour == "blue"
    assert A.replace(colour="blue").shape == "circle"
    with pytest.raises(ValueError):
        A.replace(size="huge")
    assert A.replace(colour="blue").is_holdout and not A.is_holdout


def test_generate_folder_is_deterministic(tmp_path: Path) -> None:
    first = generate_folder(tmp_path / "a", n=6, seed=3, size=64)
    second = generate_folder(tmp_path / "b", n=6, seed=3, size=64)
    assert first == second
    files_a, files_b = _all_files(tmp_path / "a"), _all_files(tmp_path / "b")
    assert len(files_a) == 6 * 2 + 1  # png + txt per image, plus labels.jsonl
    assert files_a == files_b
    generate_folder(tmp_path / "c", n=6, seed=4, size=64)
    files_c = _all_files(tmp_path / "c")
    assert all(files_a[f"{i:06d}.png"] != files_c[f"{i:06d}.png"] for i in range(6))


def test_same_attributes_give_different_images() -> None:
    rng = np.random.default_rng(0)
    one, _ = render(A, rng)
    two, _ = render(A, rng)
    assert not np.array_equal(np.asarray(one), np.asarray(two))  # jitter: no two images are the same
    again, _ = render(A, np.random.default_rng(0))
    assert np.array_equal(np.asarray(one), np.asarray(again))


def test_labels_file_matches_sidecars(tmp_path: Path) -> None:
    records = generate_folder(tmp_path, n=12, seed=0, size=96)
    assert read_labels(tmp_path) == records
    assert read_labels(tmp_path / "labels.jsonl") == records
    for record in records:
        assert set(record) == {"file", *ATTRIBUTES, "bbox", "caption"}
        assert (tmp_path / record["file"]).is_file()
        assert (tmp_path / record["file"]).with_suffix(".txt").read_text().strip() == record["caption"]
        named = parse_caption(record["caption"])
        assert named and all(record[a] == v for a, v in named.items())
        with Image.open(tmp_path / record["file"]) as im:
            assert im.size == (96, 96) and im.mode == "RGB"


@pytest.mark.parametrize("size", [64, 128])
def test_labels_match_pixels(tmp_path: Path, size: int) -> None:
    records = generate_folder(tmp_path, n=60, seed=1, size=size)
    for record in records:
        pixels = np.asarray(Image.open(tmp_path / record["file"])).astype(int)
        x0, y0, x1, y1 = record["bbox"]
        assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
        inside = np.zeros((size, size), dtype=bool)
        inside[y0:y1, x0:x1] = True
        # The background is grey (R == G == B) everywhere outside the box: the object is entirely inside.
        outside = pixels[~inside]
        assert (outside.max(axis=1) == outside.min(axis=1)).all(), record
        # Inside, the coloured pixels are the object: its colour is nearest the labelled nominal colour.
        coloured = pixels[inside & (pixels.max(axis=2) != pixels.min(axis=2))]
        assert len(coloured) >= 0.25 * (x1 - x0) * (y1 - y0), record
        mean = coloured.mean(axis=0)
        nearest = min(RGB, key=lambda name: np.abs(mean - np.array(RGB[name])).sum())
        assert nearest == record["colour"], record
        # The box touches the object on every side (it is the tight box of the drawn mask).
        object_mask = inside & (pixels.max(axis=2) != pixels.min(axis=2))
        ys, xs = np.nonzero(object_mask)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)


def test_geometry_follows_position_and_size() -> None:
    rng = np.random.default_rng(2)
    expected = {
        "left": (0.25, 0.5),
        "right": (0.75, 0.5),
        "top": (0.5, 0.25),
        "bottom": (0.5, 0.75),
        "center": (0.5, 0.5),
    }
    widths: dict[str, list[int]] = {"small": [], "large": []}
    for _ in range(200):
        attrs = sample_attrs(rng)
        _, (x0, y0, x1, y1) = render(attrs, rng, 100)
        cx, cy = (x0 + x1) / 200, (y0 + y1) / 200
        ex, ey = expected[attrs.position]
        assert abs(cx - ex) < 0.1 and abs(cy - ey) < 0.1, (attrs, cx, cy)
        widths[attrs.size].append(max(x1 - x0, y1 - y0))
    assert max(widths["small"]) < min(widths["large"])


def test_holdout_split(tmp_path: Path) -> None:
    seen = generate_folder(tmp_path / "seen", n=200, seed=0, size=32)
    held = generate_folder(tmp_path / "held", n=30, seed=0, size=32, holdout_only=True)
    assert not any((r["shape"], r["colour"]) in HOLDOUT for r in seen)
    assert all((r["shape"], r["colour"]) in HOLDOUT for r in held)
    assert {(r["shape"], r["colour"]) for r in held} == set(HOLDOUT)


def test_caption_examples() -> None:
    assert caption(A, ["size", "colour", "shape", "position"]) == "a large red circle on the left"
    assert caption(A, ["colour", "shape"]) == "a red circle"
    assert caption(A, ["shape", "colour"]) == "a red circle"  # word order is fixed, not the list order
    assert caption(A, ["background"]) == "an object on a dark background"
    assert caption(A.replace(colour="orange"), ["colour", "shape"]) == "an orange circle"
    small_blue_star = ShapeAttrs("star", "blue", "small", "top", "light")
    assert caption(small_blue_star, ATTRIBUTES, "a photo of {}") == (
        "a photo of a small blue star at the top on a light background"
    )
    with pytest.raises(ValueError):
        caption(A, [])
    with pytest.raises(ValueError):
        caption(A, ["texture"])


def test_caption_parse_round_trip_every_template_and_subset() -> None:
    rng = np.random.default_rng(0)
    # Every value of every attribute appears, plus random combinations.
    attrs_list = [A.replace(**{a: v}) for a in ATTRIBUTES for v in VALUES[a]]
    attrs_list += [sample_attrs(rng, include_holdout=True) for _ in range(20)]
    subsets = [s for k in range(1, len(ATTRIBUTES) + 1) for s in itertools.combinations(ATTRIBUTES, k)]
    for attrs in attrs_list:
        for named in subsets:
            for template in TEMPLATES:
                text = caption(attrs, named, template)
                assert parse_caption(text) == {a: getattr(attrs, a) for a in ATTRIBUTES if a in named}, text


def test_parse_caption_is_robust_to_case_and_punctuation() -> None:
    assert parse_caption("A Photo of a LARGE red circle, on the left!") == {
        "shape": "circle",
        "colour": "red",
        "size": "large",
        "position": "left",
    }
    assert parse_caption("a cat on a sofa") == {}


def test_random_captions_parse_back() -> None:
    rng = np.random.default_rng(5)
    for _ in range(300):
        attrs = sample_attrs(rng)
        named = parse_caption(random_caption(attrs, rng))
        assert {"colour", "shape"} <= set(named)
        assert all(getattr(attrs, a) == v for a, v in named.items())


@pytest.mark.parametrize("attribute", ATTRIBUTES)
def test_attribute_prompts_name_only_their_attribute(attribute: str) -> None:
    prompts = attribute_prompts(attribute)
    assert list(prompts) == list(VALUES[attribute])
    for value, texts in prompts.items():
        assert len(texts) == len(TEMPLATES) and len(set(texts)) == len(texts)
        for text in texts:
            assert parse_caption(text) == {attribute: value}, text
    with pytest.raises(ValueError):
        attribute_prompts("texture")


def test_attrs_of_record() -> None:
    record = {"file": "x.png", **A.as_dict(), "bbox": [0, 0, 1, 1], "caption": "a red circle"}
    assert attrs_of(record) == A
