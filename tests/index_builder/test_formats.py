"""Which files are images: every extension Pillow reads here is indexed (with the pixels a PNG of the
same picture gives), every image format it cannot read is reported with that reason, never ignored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ibhelpers import noise_image

from counterclip.index_builder import Index, build_index
from counterclip.index_builder.scan import IMAGE_EXTENSIONS, UNSUPPORTED_EXTENSIONS

READABLE = {  # extension -> Pillow format to write it with
    ".ico": "ICO",
    ".jpe": "JPEG",
    ".jfif": "JPEG",
    ".tga": "TGA",
    ".ppm": "PPM",
    ".pgm": "PPM",
    ".pcx": "PCX",
    ".dib": "BMP",
    ".qoi": "QOI",
}


def test_the_extension_lists() -> None:
    assert {".ico", ".jpe", ".jfif", ".tga", ".ppm", ".pcx"} <= IMAGE_EXTENSIONS
    assert {".heic", ".jxl", ".svg", ".cr2"} <= UNSUPPORTED_EXTENSIONS
    assert not IMAGE_EXTENSIONS & UNSUPPORTED_EXTENSIONS
    assert ".txt" not in IMAGE_EXTENSIONS | UNSUPPORTED_EXTENSIONS  # sidecars are not images


def test_every_readable_format_is_indexed_and_the_others_are_reported(model, tmp_path: Path) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    picture = noise_image(9, (32, 32))
    picture.save(root / "reference.png")
    for ext, fmt in READABLE.items():
        image = picture.convert("L") if ext == ".pgm" else picture
        image.save(root / f"picture{ext}", format=fmt)
    for ext in (".heic", ".jxl", ".svg", ".CR2"):
        (root / f"other{ext}").write_bytes(b"not decodable here")
    (root / "notes.md").write_text("not an image")
    summary = build_index(root, tmp_path / "idx", model=model, progress=False)
    reported = {e["path"]: e["reason"] for e in summary.errors}
    assert set(reported) == {"other.heic", "other.jxl", "other.svg", "other.CR2"}
    assert reported["other.heic"].startswith("unsupported image format (.heic): Pillow cannot decode it")
    with Index.open(tmp_path / "idx") as idx:
        paths = {m["path"]: m["id"] for m in idx.images.meta(idx.images.ids)}
        assert set(paths) == {"reference.png"} | {f"picture{ext}" for ext in READABLE}
        reference = idx.images.vectors([paths["reference.png"]])[0]
        for ext in READABLE:
            vector = idx.images.vectors([paths[f"picture{ext}"]])[0]
            lossy = ext in (".jpe", ".jfif", ".pgm")  # JPEG compression, grey
            assert float(vector @ reference) > (0.9 if lossy else 0.9999), ext
        assert {e["path"]: e["reason"] for e in idx.errors()} == reported  # stored as reported


@pytest.mark.parametrize("ext", [".heic", ".jxl"])
def test_an_unsupported_file_is_retried_once_it_becomes_readable(model, tmp_path: Path, ext: str) -> None:
    """Reported rows carry no size: if a later Pillow reads the format, the next update tries again."""
    from counterclip.index_builder import scan, update_index

    root = tmp_path / "photos"
    root.mkdir()
    noise_image(1).save(root / f"a{ext}", format="PNG")  # PNG bytes under an unsupported name
    noise_image(2).save(root / "b.png")
    assert build_index(root, tmp_path / "idx", model=model, progress=False).skipped == 1
    assert update_index(tmp_path / "idx", progress=False).skipped == 1  # still unsupported: unchanged
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scan, "UNSUPPORTED_EXTENSIONS", scan.UNSUPPORTED_EXTENSIONS - {ext})
        patch.setattr(scan, "IMAGE_EXTENSIONS", scan.IMAGE_EXTENSIONS | {ext})
        summary = update_index(tmp_path / "idx", progress=False)
    assert (summary.changed, summary.embedded, summary.skipped, summary.indexed) == (1, 1, 0, 2)
    assert np.isfinite(summary.images_index["recall_at_10"])
