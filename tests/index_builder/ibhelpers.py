"""Helpers for the index-builder tests: image folders (good and bad files) and index snapshots."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from counterclip.index_builder import Index, IndexCfg

SMALL_SHARDS = IndexCfg(name="test", shard_size=8, batch_size=4, recall_sample=200)  # many shards, fast
NON_UTF8_NAME = b"caf\xe9.png"  # latin-1 "café": not valid UTF-8


def noise_image(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A seeded RGB image with some structure (blocks + noise), so embeddings differ between seeds."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    blocks = np.kron(base, np.ones((h // 4 + 1, w // 4 + 1, 1), dtype=np.uint8))[:h, :w]
    noise = rng.integers(-20, 21, size=(h, w, 3))
    return Image.fromarray(np.clip(blocks.astype(int) + noise, 0, 255).astype(np.uint8))


def make_folder(root: Path, n: int, start: int = 0, sub: str = "") -> list[str]:
    """Write ``n`` seeded JPEGs under ``root/sub``; returns their relative paths."""
    (root / sub).mkdir(parents=True, exist_ok=True)
    rels = []
    for i in range(start, start + n):
        rel = f"{sub}img{i:04d}.jpg" if not sub else f"{sub.rstrip('/')}/img{i:04d}.jpg"
        noise_image(i).save(root / rel, quality=92)
        rels.append(rel)
    return rels


def jpeg_bytes(image: Image.Image, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **kwargs)
    return buffer.getvalue()


def png_bytes(image: Image.Image, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **kwargs)
    return buffer.getvalue()


def png_with_size(image: Image.Image, width: int, height: int) -> bytes:
    """A PNG of ``image`` whose header claims ``width x height`` (a bomb as a decoder first sees it)."""
    data = bytearray(png_bytes(image))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


# --- the hard folder ------------------------------------------------------------------------------
def half_red_half_blue(w: int, h: int) -> Image.Image:
    """Left half red, right half blue."""
    array = np.zeros((h, w, 3), np.uint8)
    array[:, : w // 2] = (255, 0, 0)
    array[:, w // 2 :] = (0, 0, 255)
    return Image.fromarray(array)


def make_hard_folder(root: Path) -> dict[str, Any]:
    """A folder with every kind of hard or broken file the builder must survive.

    Returns:
        ``{"good": {rel: expected_upright_rgb_or_None}, "bad": {rel: reason_substring},
        "ignored": [rels that must not appear at all]}``.
    """
    good: dict[str, Image.Image | None] = {}
    bad: dict[str, str] = {}
    (root / "good").mkdir(parents=True)
    (root / "bad").mkdir()

    plain = noise_image(1)
    plain.save(root / "good/plain.jpg", quality=95)
    good["good/plain.jpg"] = None  # whatever JPEG decodes to
    # CMYK JPEG
    Image.new("RGB", (40, 32), (200, 30, 30)).convert("CMYK").save(root / "good/cmyk.jpg", quality=95)
    good["good/cmyk.jpg"] = None
    # 16-bit grayscale PNG (mode I;16): must be scaled to 8 bits, not clipped to white
    ramp = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64).astype(np.uint16)
    Image.fromarray(ramp).save(root / "good/sixteen.png")
    eight = np.round(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)
    good["good/sixteen.png"] = Image.fromarray(eight, "L").convert("RGB")
    # palette with a transparent index: transparent pixels become white
    pal = Image.new("P", (16, 16), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.paste(1, (8, 0, 16, 16))
    pal.save(root / "good/palette_transparent.png", transparency=0)
    expected = np.zeros((16, 16, 3), np.uint8)
    expected[:, :8] = 255
    expected[:, 8:] = (255, 0, 0)
    good["good/palette_transparent.png"] = Image.fromarray(expected)
    # EXIF orientation 6 (rotate 90 degrees clockwise to display): stored 40x24, upright 24x40
    raw = half_red_half_blue(40, 24)
    exif = Image.Exif()
    exif[0x0112] = 6
    raw.save(root / "good/exif_rotated.jpg", exif=exif, quality=100)
    good["good/exif_rotated.jpg"] = raw.transpose(Image.Transpose.ROTATE_270)
    # animated GIF: the first frame (red) is indexed
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(root / "good/animated.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    good["good/animated.gif"] = Image.new("RGB", (20, 20), (255, 0, 0))
    # LA (grey + alpha): transparent half white, opaque half grey
    la = np.zeros((16, 16, 2), np.uint8)
    la[..., 0] = 100
    la[:, 8:, 1] = 255
    Image.fromarray(la, "LA").save(root / "good/grey_alpha.png")
    expected = np.full((16, 16, 3), 255, np.uint8)
    expected[:, 8:] = 100
    good["good/grey_alpha.png"] = Image.fromarray(expected)
    # RGBA, 1-bit, float TIFF, WebP, TIFF, BMP, upper-case extension, PNG bytes named .jpg
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 1] = 200
    rgba[:4, :, 3] = 255
    Image.fromarray(rgba, "RGBA").save(root / "good/rgba.png")
    expected = np.full((8, 8, 3), 255, np.uint8)
    expected[:4] = (0, 200, 0)
    good["good/rgba.png"] = Image.fromarray(expected)
    bits = Image.new("1", (16, 16), 0)
    bits.paste(1, (0, 0, 16, 8))
    bits.save(root / "good/one_bit.png")
    good["good/one_bit.png"] = bits.convert("RGB")
    floats = np.linspace(0.0, 1.0, 16 * 16, dtype=np.float32).reshape(16, 16)
    Image.fromarray(floats, "F").save(root / "good/float.tif")
    good["good/float.tif"] = Image.fromarray(np.round(floats * 255).astype(np.uint8), "L").convert("RGB")
    lossless = noise_image(2)
    lossless.save(root / "good/photo.webp", lossless=True)
    good["good/photo.webp"] = lossless
    noise_image(3).save(root / "good/scan.tiff")
    good["good/scan.tiff"] = noise_image(3)
    noise_image(4).save(root / "good/SCAN2.TIF")
    good["good/SCAN2.TIF"] = noise_image(4)
    noise_image(5).save(root / "good/bitmap.bmp")
    good["good/bitmap.bmp"] = noise_image(5)
    noise_image(6).save(root / "good/UPPER.JPG", quality=95)
    good["good/UPPER.JPG"] = None
    (root / "good/png_named.jpg").write_bytes(png_bytes(noise_image(7)))
    good["good/png_named.jpg"] = noise_image(7)
    # a name that is not valid UTF-8
    with open(os.path.join(os.fsencode(root / "good"), NON_UTF8_NAME), "wb") as handle:
        handle.write(png_bytes(noise_image(8)))
    good["good/" + os.fsdecode(NON_UTF8_NAME)] = noise_image(8)
    # a symlink to a good file is indexed under its own path
    os.symlink("plain.jpg", root / "good/link_to_plain.jpg")
    good["good/link_to_plain.jpg"] = None
    # a directory named like an image is a directory: its images are indexed
    (root / "good/folder.jpg").mkdir()
    noise_image(9).save(root / "good/folder.jpg/inside.png")
    good["good/folder.jpg/inside.png"] = noise_image(9)

    # --- bad ones ---
    full = jpeg_bytes(noise_image(10, (64, 64)), quality=95)
    (root / "bad/truncated.jpg").write_bytes(full[: len(full) * 6 // 10])
    bad["bad/truncated.jpg"] = "truncated"
    full_png = png_bytes(noise_image(11, (64, 64)))
    (root / "bad/truncated.png").write_bytes(full_png[: len(full_png) // 2])
    bad["bad/truncated.png"] = "truncated"
    (root / "bad/empty.jpg").write_bytes(b"")
    bad["bad/empty.jpg"] = "empty file"
    (root / "bad/text.jpg").write_text("this is not an image\n")
    bad["bad/text.jpg"] = "not an image"
    (root / "bad/garbage.gif").write_bytes(b"GIF89a" + bytes(range(256)) * 4)
    bad["bad/garbage.gif"] = "not an image"
    # decompression bombs: 1-bit images that compress to a few kB but decode to 169M / 400M pixels
    Image.new("1", (13_000, 13_000)).save(root / "bad/bomb.png")
    bad["bad/bomb.png"] = "decompression bomb"
    (root / "bad/bomb_huge.png").write_bytes(png_with_size(Image.new("1", (16, 16)), 20_000, 20_000))
    bad["bad/bomb_huge.png"] = "decompression bomb"
    Image.new("L", (60_000, 1)).save(root / "bad/strip.png")
    bad["bad/strip.png"] = "absurd dimensions"
    os.mkfifo(root / "bad/fifo.jpg")
    bad["bad/fifo.jpg"] = "not a regular file (a FIFO)"
    os.symlink("loop.jpg", root / "bad/loop.jpg")
    bad["bad/loop.jpg"] = "symlink loop"
    os.symlink("does-not-exist.jpg", root / "bad/dangling.png")
    bad["bad/dangling.png"] = "broken symlink"
    noise_image(12).save(root / "bad/unreadable.jpg")
    os.chmod(root / "bad/unreadable.jpg", 0)
    bad["bad/unreadable.jpg"] = "permission denied"

    # --- never scanned: hidden files and folders, non-image extensions, a directory symlink loop ---
    (root / ".hidden").mkdir()
    noise_image(13).save(root / ".hidden/secret.jpg")
    noise_image(14).save(root / "good/.dotfile.jpg")
    (root / "good/notes.md").write_text("not an image")
    os.symlink("..", root / "good/up")  # loops back to the root
    ignored = [".hidden/secret.jpg", "good/.dotfile.jpg", "good/notes.md", "good/up/good/plain.jpg"]
    return {"good": good, "bad": bad, "ignored": ignored}


def inject_permission_error(monkeypatch: Any, paths: set[Path]) -> None:
    """Make the decoder's ``open`` of ``paths`` raise PermissionError (for tests running as root, who
    can read mode-000 files); every other file opens normally."""
    import builtins

    from counterclip.index_builder import decode

    denied = {os.fsencode(os.path.abspath(p)) for p in paths}

    def guarded_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if os.fsencode(os.path.abspath(file)) in denied:
            raise PermissionError(13, "Permission denied", str(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(decode, "open", guarded_open, raising=False)


# --- snapshots ------------------------------------------------------------------------------------
def snapshot(index_dir: Path) -> dict[str, Any]:
    """What must be equal between two builds of the same folder: path -> (id, vector, w, h), caption
    text -> vector, errors, counts."""
    with Index.open(index_dir) as idx:
        ids = idx.images.ids
        metas = idx.images.meta(ids)
        vectors = idx.images.vectors(ids)
        images = {
            m["path"]: (m["id"], vectors[i], m["width"], m["height"], m["sha256"])
            for i, m in enumerate(metas)
        }
        cids = idx.captions.ids
        cmeta = idx.captions.meta(cids)
        cvec = idx.captions.vectors(cids)
        captions = {m["text"]: (cvec[i], m["source"]) for i, m in enumerate(cmeta)}
        errors = {e["path"]: e["reason"] for e in idx.errors()}
        counts = (idx.images.count, idx.captions.count, idx.images.info.ntotal)
    return {"images": images, "captions": captions, "errors": errors, "counts": counts}


def assert_same_index(a: dict[str, Any], b: dict[str, Any], same_ids: bool = True) -> None:
    """Two snapshots describe the same index (vectors to float tolerance; ids too when ``same_ids``)."""
    assert a["counts"] == b["counts"]
    assert a["errors"] == b["errors"]
    assert sorted(a["images"]) == sorted(b["images"])
    for path, (id_a, vec_a, *rest_a) in a["images"].items():
        id_b, vec_b, *rest_b = b["images"][path]
        if same_ids:
            assert id_a == id_b, path
        assert rest_a == rest_b, path
        np.testing.assert_allclose(vec_a, vec_b, atol=2e-5, err_msg=path)
    assert sorted(a["captions"]) == sorted(b["captions"])
    for text, (vec_a, source_a) in a["captions"].items():
        vec_b, source_b = b["captions"][text]
        assert source_a == source_b
        np.testing.assert_allclose(vec_a, vec_b, atol=2e-5, err_msg=text)


def current_db(index_dir: Path) -> Path:
    """The items file of the current generation."""
    from counterclip.index_builder.manifest import Manifest

    return index_dir / Manifest.read(index_dir).db_file


def assert_no_debris(index_dir: Path) -> None:
    """Only the current generation's files remain (no reader holds an older one): every shard file is
    referenced by its rows, every file is listed by its manifest, no temp files or WAL remain."""
    import sqlite3

    from counterclip.index_builder.manifest import Manifest, manifest_name

    manifest = Manifest.read(index_dir)
    conn = sqlite3.connect(f"file:{index_dir / manifest.db_file}?mode=ro&immutable=1", uri=True)
    try:
        referenced = {
            f"embeddings/{kind}-{s:05d}{suffix}.npy"
            for kind in ("images", "captions")
            for (s,) in conn.execute(f"SELECT DISTINCT shard FROM {kind} WHERE status = 'indexed'")
            for suffix in ("", ".ids")
        }
    finally:
        conn.close()
    on_disk = {p.relative_to(index_dir).as_posix() for p in index_dir.rglob("*") if p.is_file()}
    on_disk -= {".lock", ".gc.lock", "manifest.json", manifest_name(manifest.generation)}
    assert {n for n in on_disk if n.startswith("embeddings/")} == referenced
    assert on_disk == set(manifest.files)


# --- damage ---------------------------------------------------------------------------------------
DAMAGE_MODES = ("truncate", "zero", "garble", "delete")


def damage(path: Path, mode: str, seed: int = 0) -> None:
    """Damage a file as a disk, a copy or a person would: cut it in half, zero it, overwrite 256 bytes
    in its middle with random ones, or delete it."""
    if mode == "delete":
        path.unlink()
        return
    data = bytearray(path.read_bytes())
    if mode == "truncate":
        data = data[: len(data) // 2]
    elif mode == "zero":
        data = bytearray(len(data))
    elif mode == "garble":
        rng = np.random.default_rng(seed)
        n = min(256, len(data))
        start = (len(data) - n) // 2
        noise = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        if noise == bytes(data[start : start + n]):  # pragma: no cover - astronomically unlikely
            noise = bytes(b ^ 0xFF for b in noise)
        data[start : start + n] = noise
    else:
        raise ValueError(mode)
    path.write_bytes(bytes(data))
