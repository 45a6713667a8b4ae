"""Imports verify: vectors from clip-retrieval output are checked against fresh encodes of a sample of their
files before anything is written. The same model's vectors of large images (which the old decode shrank)
come back with nothing reported as changed; another model's, or another preprocessing's, are one error with
the measured cosines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ibhelpers import noise_image
from PIL import Image

from counterclip.engine import Engine
from counterclip.errors import InputError
from counterclip.index_builder import Index, build_index
from counterclip.index_builder.interop import export_clip_retrieval, import_clip_retrieval
from counterclip.models import load_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory, model) -> Path:
    """Shapes at 128 px (four times the tiny model's side), indexed and exported as clip-retrieval output."""
    from counterclip.shapes import generate_folder

    root = tmp_path_factory.mktemp("import_verify")
    generate_folder(root / "shapes", n=20, seed=4, size=128)
    build_index(root / "shapes", root / "idx", model=model, progress=False)
    export_clip_retrieval(root / "idx", root / "out", rows_per_file=8)
    return root


def test_the_same_models_vectors_import_and_verify(exported: Path, model) -> None:
    summary = import_clip_retrieval(exported / "out", exported / "imported", model, progress=False)
    check = summary.vectors_check
    assert check["samples"] == 20 and check["bound"] == 0.999 and check["below"] == []
    assert 0.99999 <= check["lowest"] <= check["median"] <= 1.0 + 1e-9  # float16 in between
    assert "to fresh encodes" in str(summary)
    with Index.open(exported / "imported") as idx:
        assert idx.manifest.last_run["vectors_check"] == check
        assert idx.decode_options.min_side is None  # verified as the embedder made them: the files' pixels
    with Engine(Index.open(exported / "imported"), model) as engine:
        for image in (1, 7, 13):
            result = engine.counterfactuals(image=image, text="a red circle", k=5, threshold=-1e9)
            assert result.stale == [] and result.items  # 0 unchanged files reported as changed
            assert all(item.verdict != "unverifiable" for item in result.items)


def test_another_models_vectors_are_refused_with_the_cosines(
    exported: Path, tiny_openclip: str, tmp_path
) -> None:
    from tiny_models import write_tiny_openclip

    config, weights = write_tiny_openclip(tmp_path / "other", seed=7)
    other = load_model(f"{config}:{weights}", device="cpu")
    with pytest.raises(InputError) as caught:
        import_clip_retrieval(exported / "out", tmp_path / "idx", other, progress=False)
    message = str(caught.value)
    assert message.startswith(f"import of {exported / 'out'} refused: its vectors are not {other.spec}'s")
    assert "lowest cosine 0." in message and "on 20 files (bound 0.999)" in message
    assert "Nothing was written" in message and not (tmp_path / "idx").exists()


def test_another_preprocessing_is_refused(model, tmp_path: Path) -> None:
    """An embedder that ignored EXIF orientation (as `Image.open` alone does): refused, with the figures."""
    folder = tmp_path / "photos"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    paths = []
    for i in range(6):
        noise_image(30 + i, (90, 40)).save(folder / f"{i}.jpg", exif=exif, quality=95)
        paths.append(folder / f"{i}.jpg")
    vectors = model.encode_pil([Image.open(p) for p in paths]).numpy()  # sideways: no exif_transpose
    out = tmp_path / "out"
    (out / "img_emb").mkdir(parents=True)
    (out / "metadata").mkdir()
    np.save(out / "img_emb" / "img_emb_0.npy", vectors.astype(np.float16))
    pq.write_table(pa.table({"image_path": [str(p) for p in paths]}), out / "metadata" / "metadata_0.parquet")
    with pytest.raises(InputError, match=r"refused: .*\(lowest cosine 0\.\d+, median 0\.\d+ on 6 files"):
        import_clip_retrieval(out, tmp_path / "idx", model, progress=False)
    assert not (tmp_path / "idx").exists()
