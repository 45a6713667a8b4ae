"""`load_image`: every mode becomes the right 8-bit RGB pixels, and every broken file a one-line reason."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from ibhelpers import NON_UTF8_NAME, inject_permission_error, make_hard_folder
from PIL import Image

from counterclip.index_builder.decode import DecodeError, DecodeOptions, decode_bytes, load_image, to_rgb

# Pillow warns about the 169-megapixel bomb before the builder refuses it; the refusal is what is tested.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


@pytest.fixture(scope="module")
def hard(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("hard")
    return root, make_hard_folder(root)


def test_good_files_decode_to_the_expected_pixels(hard: tuple[Path, dict]) -> None:
    root, expected = hard
    checked = 0
    for rel, image in expected["good"].items():
        loaded = load_image(root / rel)
        assert loaded.image.mode == "RGB", rel
        assert (loaded.width, loaded.height) == loaded.image.size
        if image is None:
            continue
        got = np.asarray(loaded.image, dtype=int)
        want = np.asarray(image, dtype=int)
        assert got.shape == want.shape, rel
        if rel.endswith(".jpg") and rel != "good/png_named.jpg":  # JPEG is lossy (the EXIF test image)
            assert np.abs(got - want).mean() <= 8, rel
        else:
            assert np.abs(got - want).max() <= 1, rel
        checked += 1
    assert checked >= 12


def test_exif_rotation_is_applied(hard: tuple[Path, dict]) -> None:
    root, _ = hard
    loaded = load_image(root / "good/exif_rotated.jpg")
    assert (loaded.width, loaded.height) == (24, 40)  # stored 40x24 with orientation 6
    pixels = np.asarray(loaded.image, dtype=int)
    assert pixels[5, 12, 0] > 200 and pixels[5, 12, 2] < 60  # top is red (the stored left half)
    assert pixels[35, 12, 2] > 200 and pixels[35, 12, 0] < 60  # bottom is blue


def test_cmyk_becomes_the_same_colour(hard: tuple[Path, dict]) -> None:
    root, _ = hard
    pixels = np.asarray(load_image(root / "good/cmyk.jpg").image, dtype=int)
    assert np.abs(pixels - np.array([200, 30, 30])).max() <= 12


def test_sixteen_bit_is_scaled_not_clipped(hard: tuple[Path, dict]) -> None:
    root, _ = hard
    assert Image.open(root / "good/sixteen.png").mode == "I;16"
    pixels = np.asarray(load_image(root / "good/sixteen.png").image)
    assert pixels.min() == 0 and 250 <= pixels.max() <= 255 and len(np.unique(pixels)) > 200


def test_bad_files_give_their_reason(hard: tuple[Path, dict]) -> None:
    root, expected = hard
    scan_level = {"bad/fifo.jpg", "bad/loop.jpg", "bad/dangling.png"}  # refused before decoding
    for rel, reason in expected["bad"].items():
        if rel in scan_level or rel == "bad/unreadable.jpg":
            continue
        with pytest.raises(DecodeError) as info:
            load_image(root / rel)
        assert reason in str(info.value), (rel, str(info.value))
        assert "\n" not in str(info.value)


def test_permission_denied_is_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked.png"
    Image.new("RGB", (4, 4)).save(path)
    os.chmod(path, 0)
    if os.geteuid() == 0:  # root reads mode-000 files: make the read fail the way it does for users
        inject_permission_error(monkeypatch, {path})
    with pytest.raises(DecodeError, match="^permission denied$"):
        load_image(path)


def test_limits_are_configurable() -> None:
    from ibhelpers import png_bytes

    data = png_bytes(Image.new("RGB", (100, 10)))
    assert decode_bytes(data).size == (100, 10)
    with pytest.raises(DecodeError, match="image too large"):
        decode_bytes(data, DecodeOptions(max_pixels=999))
    with pytest.raises(DecodeError, match="absurd dimensions"):
        decode_bytes(data, DecodeOptions(max_side=99))
    with pytest.raises(DecodeError, match="file too large"):
        from counterclip.index_builder.decode import _read_bytes

        _read_bytes(__file__, DecodeOptions(max_file_bytes=10))


def test_to_rgb_modes() -> None:
    assert to_rgb(Image.new("RGB", (2, 2), (1, 2, 3))).getpixel((0, 0)) == (1, 2, 3)
    assert to_rgb(Image.new("L", (2, 2), 7)).getpixel((0, 0)) == (7, 7, 7)
    assert to_rgb(Image.new("RGBA", (2, 2), (10, 20, 30, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("RGBA", (2, 2), (10, 20, 30, 255))).getpixel((0, 0)) == (10, 20, 30)
    assert to_rgb(Image.new("I", (2, 2), 65535)).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("I", (2, 2), 200)).getpixel((0, 0)) == (200, 200, 200)  # 8-bit data in mode I
    assert to_rgb(Image.new("F", (2, 2), 0.5)).getpixel((0, 0)) == (128, 128, 128)


def test_non_utf8_name_round_trips(hard: tuple[Path, dict]) -> None:
    root, _ = hard
    name = os.fsdecode(NON_UTF8_NAME)
    assert load_image(root / "good" / name).width == 48


def test_downscale_keeps_the_full_size_and_the_look(tmp_path: Path) -> None:
    from ibhelpers import half_red_half_blue, noise_image

    noise_image(3, (256, 192)).save(tmp_path / "big.jpg", quality=95)
    full = load_image(tmp_path / "big.jpg")
    drafted = load_image(tmp_path / "big.jpg", DecodeOptions(min_side=60))
    assert (full.width, full.height) == (drafted.width, drafted.height) == (256, 192)
    assert full.image.size == (256, 192) and drafted.image.size == (128, 96)  # 1/2 (1/4 gives 48 < 60)
    for side, size in ((40, (64, 48)), (24, (32, 24)), (100, (256, 192))):  # 1/4, 1/8, too small to scale
        assert load_image(tmp_path / "big.jpg", DecodeOptions(min_side=side)).image.size == size
    smaller = np.asarray(full.image.resize(drafted.image.size, Image.Resampling.BOX), dtype=int)
    assert np.abs(smaller - np.asarray(drafted.image, dtype=int)).mean() < 4
    assert full.sha256 == drafted.sha256
    # EXIF rotation: the recorded size is the upright full-resolution one
    exif = Image.Exif()
    exif[0x0112] = 6
    half_red_half_blue(256, 96).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    rotated = load_image(tmp_path / "rotated.jpg", DecodeOptions(min_side=24))
    assert (rotated.width, rotated.height) == (96, 256) and rotated.image.size == (24, 64)
    pixels = np.asarray(rotated.image, dtype=int)
    assert pixels[4, 12, 0] > 200 and pixels[60, 12, 2] > 200  # red on top, blue below
    # other formats are box-reduced by an integer factor (shortest side 192 // 40 = 4)
    noise_image(4, (256, 192)).save(tmp_path / "big.png")
    reduced = load_image(tmp_path / "big.png", DecodeOptions(min_side=40))
    assert reduced.image.size == (64, 48) and (reduced.width, reduced.height) == (256, 192)
    assert reduced.image.tobytes() == noise_image(4, (256, 192)).reduce(4).tobytes()
    assert load_image(tmp_path / "big.png", DecodeOptions(min_side=100)).image.size == (256, 192)
