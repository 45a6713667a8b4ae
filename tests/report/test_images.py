"""Rendering: valid PNGs of the image's size, colour scales, token strip, atomic save."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from counterclip.explainers import Explanation
from counterclip.report import colorize, overlay, panel, save_png, token_strip


def _reopen(path) -> Image.Image:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return im.copy()


def test_overlay_png_has_the_image_size(rgb_images, tmp_path) -> None:
    image = rgb_images[2]  # 50 x 64
    pixel_map = np.zeros((image.height, image.width))
    pixel_map[10:20, 5:15] = 1.0
    out = overlay(image, pixel_map, alpha=0.5)
    reopened = _reopen(save_png(out, tmp_path / "overlay.png"))
    assert reopened.size == image.size and reopened.mode == "RGB"
    # alpha 0.5: each pixel is the mean of the image and the colour-mapped heat value.
    heat = np.asarray(colorize(pixel_map), dtype=np.float64)
    expected = 0.5 * np.asarray(image, dtype=np.float64) + 0.5 * heat
    assert np.abs(np.asarray(reopened, dtype=np.float64) - expected).max() <= 1.0


def test_overlay_resizes_a_coarse_map(rgb_images) -> None:
    assert overlay(rgb_images[0], np.eye(4)).size == rgb_images[0].size


def test_colorize_scales() -> None:
    positive = np.asarray(colorize(np.array([[0.0, 1.0], [2.0, 4.0]])))
    assert positive.shape == (2, 2, 3)
    assert positive[0, 0].sum() < positive[1, 1].sum()  # inferno: low = dark, high = bright
    signed = np.asarray(colorize(np.array([[-1.0, 0.0, 1.0]])))
    assert signed[0, 1].min() > 230  # zero is white on the diverging scale
    assert (
        signed[0, 0, 2] > signed[0, 0, 0] and signed[0, 2, 0] > signed[0, 2, 2]
    )  # negative blue, positive red
    assert (
        len(np.unique(np.asarray(colorize(np.ones((3, 3)))).reshape(-1, 3), axis=0)) == 1
    )  # constant map: one colour, no division by zero


def test_panel_layout_and_png(rgb_images, tmp_path) -> None:
    image = rgb_images[0]  # 48 x 40
    exp = Explanation(
        method="relevance",
        modality="both",
        score=1.5,
        pixel_map=np.random.default_rng(0).random((image.height, image.width)),
        tokens=["a", "red", "circle"],
        token_map=np.array([0.1, 0.5, 0.9]),
        explains="similarity to 'a red circle'",
    )
    out = panel(image, exp)
    reopened = _reopen(save_png(out, tmp_path / "panel.png"))
    assert reopened.width >= 3 * image.width + 8 and reopened.height > image.height
    # The first tile is the image itself, below the title line.
    np.testing.assert_array_equal(
        np.asarray(reopened)[14 : 14 + image.height, : image.width], np.asarray(image)
    )


def test_panel_for_a_pixel_counterfactual_shows_the_edited_image(rgb_images) -> None:
    image = rgb_images[1]
    edited = Image.new("RGB", image.size, (255, 0, 0))
    exp = Explanation(
        method="pixel-cf",
        modality="image",
        score=0.0,
        pixel_map=np.ones((32, 32)),
        extras={"edited_image": edited},
    )
    out = np.asarray(panel(image, exp))
    middle = out[14 : 14 + image.height, image.width + 4 : 2 * image.width + 4]
    assert (middle == np.array([255, 0, 0])).all()


def test_token_strip(tmp_path) -> None:
    strip = token_strip(["a", "blue", "circle"], [0.0, 1.0, 0.5])
    reopened = _reopen(save_png(strip, tmp_path / "tokens.png"))
    assert reopened.width > 30 and reopened.height == 44
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


def test_png_data_uri_round_trips() -> None:
    import base64
    import io

    from counterclip.report import png_data_uri

    uri = png_data_uri(Image.new("RGB", (3, 2), (1, 2, 3)))
    assert uri.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as im:
        assert im.size == (3, 2) and im.getpixel((0, 0)) == (1, 2, 3)
