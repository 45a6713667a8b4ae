"""`Index`: concurrent readers get the serial results; unknown ids are errors, not wrong rows."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from ibhelpers import make_folder

from counterclip.index_builder import Index, build_index, load_image


def test_concurrent_queries_equal_serial(model, tmp_path: Path) -> None:
    root = tmp_path / "photos"
    make_folder(root, 24)
    (root / "img0001.txt").write_text("one\n")
    build_index(root, tmp_path / "idx", model=model, progress=False)
    with Index.open(tmp_path / "idx") as idx:
        ids = idx.images.ids

        def query(i: int) -> tuple:
            chosen = ids[i % len(ids) : i % len(ids) + 3]
            vectors = idx.images.vectors(chosen)
            dist, labels = idx.images.search(vectors, 5)
            meta = idx.images.meta(labels[:, 0])
            caption = idx.captions.meta(idx.captions.ids)
            return labels.tolist(), np.round(dist, 5).tolist(), [m["path"] for m in meta], caption

        serial = [query(i) for i in range(64)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            parallel = list(pool.map(query, range(64)))
        assert parallel == serial
        assert all(s[0][0][0] == ids[i % len(ids)] for i, s in enumerate(serial))  # each finds itself first


def test_unknown_ids_are_key_errors(model, tmp_path: Path) -> None:
    root = tmp_path / "photos"
    make_folder(root, 3)
    (root / "bad.jpg").write_bytes(b"")
    build_index(root, tmp_path / "idx", model=model, progress=False)
    with Index.open(tmp_path / "idx") as idx:
        ids = idx.images.ids
        bad_id = idx.errors()[0]["id"]  # a skipped file has a row but no vector
        for wrong in (-1, bad_id, int(ids.max()) + 1):
            with pytest.raises(KeyError):
                idx.images.vectors([ids[0], wrong])
            with pytest.raises(KeyError):
                idx.images.meta([wrong])
        with pytest.raises(KeyError):
            idx.captions.meta([1])
        assert idx.images.vectors([]).shape == (0, idx.dim)
        assert idx.image_id_for_path("bad.jpg") is None and idx.image_id_for_path("/elsewhere/x.jpg") is None
        np.testing.assert_array_equal(idx.images.vectors(ids[::-1]), idx.images.vectors(ids)[::-1])


def test_large_jpegs_are_decoded_at_reduced_scale_reproducibly(model, tmp_path: Path) -> None:
    """The tiny model reads 32 px: a 256x192 JPEG is decoded at 1/4 scale (64x48, shortest side >= 32)."""
    from ibhelpers import noise_image

    root = tmp_path / "photos"
    root.mkdir()
    noise_image(5, (256, 192)).save(root / "big.jpg", quality=95)
    build_index(root, tmp_path / "idx", model=model, progress=False, fast_decode=True)
    with Index.open(tmp_path / "idx") as idx:
        assert idx.decode_options.min_side == 32
        meta = idx.images.meta(idx.images.ids)[0]
        assert (meta["width"], meta["height"]) == (256, 192)  # the file's size, not the decoded one
        loaded = idx.load_image("big.jpg")
        assert loaded.image.size == (64, 48)
        stored = idx.images.vectors(idx.images.ids)[0]
        np.testing.assert_allclose(stored, model.encode_pil([loaded.image]).numpy()[0], atol=1e-5)
        full = model.encode_pil([load_image(root / "big.jpg").image]).numpy()[0]
        assert float(stored @ full) > 0.99  # the same picture to the model
