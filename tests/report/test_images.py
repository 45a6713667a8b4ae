"""Rendering: overlays at full resolution whose opacity follows the map, colour scales centred at zero or
starting at zero, token strips, the labelled panel of one explanation, atomic saves."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from counterclip.explainers import Explanation
from counterclip.explainers.figure import OPACITY, MapScale
from counterclip.report import colorize, overlay, panel, save_explanation, save_png, token_strip


def _reopen(path) -> Image.Image:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return im.copy()


def test_overlay_blends_by_the_maps_strength(rgb_images, tmp_path) -> None:
    image = rgb_images[2]  # 50 x 64
    pixel_map = np.zeros((image.height, image.width))
    pixel_map[10:20, 5:15] = 1.0
    pixel_map[30:40, 5:15] = 0.5
    out = overlay(image, pixel_map)
    reopened = _reopen(save_png(out, tmp_path / "overlay.png"))
    assert reopened.size == image.size and reopened.mode == "RGB"
    # weight = OPACITY * value / max: where the map is 0 the image is untouched
    heat = np.asarray(colorize(pixel_map), dtype=np.float64)
    weight = OPACITY * pixel_map[..., None]
    expected = (1 - weight) * np.asarray(image, dtype=np.float64) + weight * heat
    assert np.abs(np.asarray(reopened, dtype=np.float64) - expected).max() <= 1.0
    np.testing.assert_array_equal(np.asarray(reopened)[0:10], np.asarray(image)[0:10])


def test_overlay_resizes_a_coarse_map_and_leaves_an_empty_map_out(rgb_images) -> None:
    assert overlay(rgb_images[0], np.eye(4)).size == rgb_images[0].size
    untouched = overlay(rgb_images[0], np.zeros((4, 4)))
    np.testing.assert_array_equal(np.asarray(untouched), np.asarray(rgb_images[0]))


def test_colour_scales() -> None:
    positive = np.asarray(colorize(np.array([[0.0, 1.0], [2.0, 4.0]])))
    assert positive.shape == (2, 2, 3)
    assert positive[0, 0].sum() < positive[1, 1].sum()  # inferno: low = dark, high = bright
    signed = np.asarray(colorize(np.array([[-1.0, 0.0, 1.0]])))
    assert signed[0, 1].min() > 230  # zero is white on the diverging scale
    assert signed[0, 0, 2] > signed[0, 0, 0] and signed[0, 2, 0] > signed[0, 2, 2]  # blue -, red +
    # a diverging scale is centred at zero: -1 and +1 are as strong as each other even for [-1, 0.25]
    scale = MapScale.of(np.array([-1.0, 0.25]))
    assert (scale.low, scale.high, scale.signed) == (-1.0, 1.0, True)
    assert scale.strength(np.array([-1.0, 1.0, 0.0])).tolist() == [1.0, 1.0, 0.0]
    # a sequential scale starts at zero, not at the minimum: 0.30..0.31 is flat, not full contrast
    flat = MapScale.of(np.array([0.30, 0.31]))
    assert (flat.low, flat.high, flat.state) == (0.0, 0.31, "flat")
    assert "flat map" in flat.note()
    assert MapScale.of(np.zeros((3, 3))).state == "empty" and "empty map" in MapScale.of(np.zeros(3)).note()
    # a floor keeps tiny values pale: 0.0002 on a scale of at least 0.1
    pale = MapScale.of(np.array([0.0002, -0.0001]), floor=0.1)
    assert pale.high == 0.1 and pale.strength(np.array([0.0002]))[0] == pytest.approx(0.002)
    assert "weak map" in pale.note()


def test_panel_is_the_labelled_figure(rgb_images, tmp_path) -> None:
    image = rgb_images[0]  # 48 x 40: shown enlarged by a whole factor (5x -> 240 x 200)
    exp = Explanation(
        method="relevance",
        modality="both",
        score=1.5,
        pixel_map=np.random.default_rng(0).random((image.height, image.width)),
        tokens=["a", "red", "circle"],
        token_map=np.array([0.1, 0.5, 0.9]),
        explains="similarity to 'a red circle'",
    )
    written = save_explanation(image, exp, tmp_path / "panel.png")
    reopened = _reopen(written["panel"])
    assert reopened.size == panel(image, exp).size
    assert reopened.width >= 2 * 240 and reopened.height > 200
    with Image.open(written["panel"]) as im:
        chunks = dict(im.text)
    assert chunks["Title"] == "relevance: similarity to 'a red circle' = 1.5"
    assert "tile: the image" in chunks["Description"]
    # no p(match) known: the title does not claim a match the score alone cannot tell
    assert "tile: what in it counts toward 'a red circle'" in chunks["Description"]
    top = f"{exp.pixel_map.max():.3g}"  # a sequential scale: 0 to the map's largest value
    assert f"legend: 0 to {top}; bright: counts most for the score" in chunks["Description"]
    assert "words: which words count: what in it counts toward 'a red circle'" in chunks["Description"]
    # the image tile holds the image itself, enlarged 5x with sharp pixels
    array = np.asarray(reopened)
    rows, cols = np.where((array == np.asarray(image)[0, 0]).all(axis=-1))
    assert len(rows) >= 25  # its top-left pixel is a 5x5 block somewhere in the figure


def test_pixel_counterfactual_panel_says_what_changed(rgb_images) -> None:
    image = rgb_images[1]
    edited = Image.new("RGB", image.size, (255, 0, 0))
    spread = np.ones((32, 32)) * 0.1  # every pixel changed a little: like noise
    exp = Explanation(
        method="pixel-cf",
        modality="image",
        score=2.0,
        pixel_map=spread,
        explains="similarity to 'a red circle'",
        extras={"edited_image": edited, "score_8bit": 2.5, "direction": "increase", "verified": True},
    )
    figure = exp.show(image)
    titles = [t.title for t in figure.tiles]
    assert titles == [
        "the image: 2",
        "edited: 2.5 (+0.5, moved as asked)",
        "where the pixels changed (mean 8-bit levels)",
    ]
    assert "spread over the whole image like noise" in figure.tiles[2].notes[0]
    np.testing.assert_array_equal(np.asarray(figure.tiles[1].image), np.asarray(edited))
    lowered = Explanation(**{**exp.__dict__, "extras": {**exp.extras, "score_8bit": 1.9}})
    assert "did NOT move as asked" in lowered.show(image).tiles[1].title


def test_token_strip(tmp_path) -> None:
    strip = token_strip(["a", "blue", "circle"], [0.0, 1.0, 0.5])
    reopened = _reopen(save_png(strip, tmp_path / "tokens.png"))
    assert reopened.width > 30 and reopened.height == 48
    with pytest.raises(ValueError):
        token_strip(["a"], [0.1, 0.2])


def test_save_png_is_atomic_and_leaves_no_temp_files(tmp_path) -> None:
    target = tmp_path / "sub" / "x.png"
    save_png(Image.new("RGB", (5, 7)), target)
    assert _reopen(target).size == (5, 7)
    assert [p.name for p in target.parent.iterdir()] == ["x.png"]

    class Broken:
        def save(self, fh, format):  # noqa: A002 - PIL's keyword
            fh.write(b"partial")
            raise OSError("disk full")

    with pytest.raises(OSError):
        save_png(Broken(), target)  # type: ignore[arg-type]
    assert _reopen(target).size == (5, 7)  # the old file is untouched
    assert [p.name for p in target.parent.iterdir()] == ["x.png"]


def test_writing_to_a_folder_is_one_line_error(tmp_path) -> None:
    from counterclip.errors import InputError

    with pytest.raises(InputError, match="it is a folder; give a file name inside it"):
        save_png(Image.new("RGB", (2, 2)), tmp_path)


def test_png_data_uri_round_trips() -> None:
    import base64
    import io

    from counterclip.report import png_data_uri

    uri = png_data_uri(Image.new("RGB", (3, 2), (1, 2, 3)))
    assert uri.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as im:
        assert im.size == (3, 2) and im.getpixel((0, 0)) == (1, 2, 3)


@pytest.mark.parametrize(
    ("p_match", "title"),
    [
        (0.97, "why it matches 'a red circle'"),
        (0.5, "why it matches 'a red circle'"),
        (0.2, "what in it counts toward 'a red circle' (not a match)"),
        (None, "what in it counts toward 'a red circle'"),
    ],
)
def test_pair_map_title_follows_p_match(rgb_images, p_match, title) -> None:
    image = rgb_images[0]
    exp = Explanation(
        method="relevance",
        modality="both",
        score=1.5,
        pixel_map=np.ones((image.height, image.width)),
        tokens=["a", "red", "circle"],
        token_map=np.array([0.1, 0.5, 0.9]),
        explains="similarity to 'a red circle'",
        extras={"p_match": p_match},
    )
    figure = exp.show(image)
    assert [tile.title for tile in figure.tiles] == ["the image", title]
    assert figure.tokens.title == f"which words count: {title}"
