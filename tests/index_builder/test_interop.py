"""clip-retrieval interop: export -> import -> export -> import round trip, imported items without a file
answered as unverifiable, and bad input refused with the file and row named, nothing half-written."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from counterclip.engine import Engine
from counterclip.engine.sides import ImageSide
from counterclip.errors import IndexFormatError, InputError
from counterclip.index_builder import Index, build_index, update_index
from counterclip.index_builder.interop import export_clip_retrieval, import_clip_retrieval


@pytest.fixture(scope="module")
def built(tmp_path_factory, model):
    """A shapes folder (every image with its caption) indexed with the tiny model, and its export."""
    from counterclip.shapes import generate_folder

    root = tmp_path_factory.mktemp("interop")
    generate_folder(root / "shapes", n=24, seed=5, size=48)
    build_index(root / "shapes", root / "idx", model=model, progress=False)
    summary = export_clip_retrieval(root / "idx", root / "out1", rows_per_file=10)
    assert (summary.rows, summary.partitions, summary.with_text) == (24, 3, True)
    return root


def _snapshot(index_dir: Path) -> dict:
    with Index.open(index_dir) as idx:
        ids = idx.images.ids
        metas = idx.images.meta(ids)
        links = dict(
            idx._meta.query(
                "SELECT image_id, MIN(caption_id) FROM caption_links WHERE image_id IS NOT NULL GROUP BY image_id"
            )
        )
        texts = {m["id"]: m["text"] for m in idx.captions.meta(idx.captions.ids)}
        return {
            "ids": ids.tolist(),
            "vectors": idx.images.vectors(ids),
            "paths": [m["path"] for m in metas],
            "urls": [m["url"] for m in metas],
            "has_file": [m["has_file"] for m in metas],
            "captions": [texts[links[int(i)]] for i in ids],
            "caption_vectors": idx.captions.vectors([links[int(i)] for i in ids]),
        }


def test_round_trip_import_export_import(built, model) -> None:
    root = built
    original = _snapshot(root / "idx")
    first = import_clip_retrieval(root / "out1", root / "imp1", model, progress=False)
    assert (first.images, first.with_file, first.captions) == (24, 24, len(set(original["captions"])))
    a = _snapshot(root / "imp1")
    assert a["captions"] == original["captions"]
    assert a["paths"] == [str(root / "shapes" / p) for p in original["paths"]]  # absolute image_path
    np.testing.assert_allclose(a["vectors"], original["vectors"], atol=2e-3)  # float16 in between
    np.testing.assert_allclose(a["caption_vectors"], original["caption_vectors"], atol=2e-3)
    assert all(a["has_file"]) and a["urls"] == [None] * 24

    export_clip_retrieval(root / "imp1", root / "out2", rows_per_file=10)
    for name in ("metadata_0.parquet", "metadata_1.parquet", "metadata_2.parquet"):
        assert pq.read_table(root / "out1/metadata" / name).equals(
            pq.read_table(root / "out2/metadata" / name)
        )
    for sub, stem in (("img_emb", "img_emb"), ("text_emb", "text_emb")):
        for key in "012":
            x = np.load(root / "out1" / sub / f"{stem}_{key}.npy").astype(np.float32)
            y = np.load(root / "out2" / sub / f"{stem}_{key}.npy").astype(np.float32)
            np.testing.assert_allclose(x, y, atol=1e-3)

    import_clip_retrieval(root / "out2", root / "imp2", model, progress=False)
    b = _snapshot(root / "imp2")
    for key in ("ids", "paths", "urls", "has_file", "captions"):
        assert a[key] == b[key], key
    np.testing.assert_allclose(a["vectors"], b["vectors"], atol=1e-3)
    with Index.open(root / "imp2") as idx:  # the FAISS index finds every stored vector at rank 1
        _, got = idx.images.search(idx.images.vectors(idx.images.ids), 1)
        assert got[:, 0].tolist() == idx.images.ids.tolist()
        assert set(idx.images.info.recall_by_query) == {"stored", "text_to_image", "path"}


def _copy(built: Path, name: str) -> Path:
    target = built / name
    shutil.copytree(built / "out1", target)
    return target


def test_items_without_a_file_are_unverifiable(built, model) -> None:
    src = _copy(built, "no_files")
    meta = src / "metadata/metadata_0.parquet"
    table = pq.read_table(meta)
    paths = table.column("image_path").to_pylist()
    gone = [f"/nowhere/{Path(p).name}" for p in paths[:6]] + paths[6:]
    urls = [f"https://example.org/{i}.png" if i < 6 else None for i in range(len(paths))]
    table = table.set_column(table.schema.get_field_index("image_path"), "image_path", pa.array(gone))
    table = table.set_column(table.schema.get_field_index("url"), "url", pa.array(urls, pa.string()))
    pq.write_table(table, meta)
    summary = import_clip_retrieval(src, built / "imp_nofile", model, progress=False)
    assert summary.with_file == 18
    with Index.open(built / "imp_nofile") as idx:
        metas = idx.images.meta(idx.images.ids)
        assert [m["has_file"] for m in metas] == [False] * 6 + [True] * 18
        assert [m["abs_path"] for m in metas[:6]] == [None] * 6
        assert [m["url"] for m in metas[:6]] == urls[:6]
        assert metas[0]["path"] == gone[0]
        side = ImageSide(idx.images, idx.images.vectors(idx.images.ids[:1])[0], None, model, idx.load_image)
        fresh = side.reencode(idx.images.ids)
        assert fresh[:6] == [(None, None)] * 6  # nothing to re-score
        stored = idx.images.vectors(idx.images.ids[6:])
        for (vec, reason), want in zip(fresh[6:], stored, strict=True):
            assert reason is None and float(vec @ want) > 0.999  # re-encoded from the file: the same vector
    with Engine.open(built / "imp_nofile", device="cpu") as engine:
        no_file = set(engine.index.images.ids[:6].tolist())
        seen = []
        for text in ("a red circle", "a blue square", "a green triangle"):
            result = engine.counterfactuals(
                image=int(engine.index.images.ids[10]), text=text, k=8, mode="decrease", threshold=1e9
            )
            for item in result.items:
                seen.append(item.id)
                assert (item.verdict == "unverifiable") == (item.id in no_file), (item.id, item.verdict)
        assert no_file & set(seen), "no file-less item was among the answers: the test shows nothing"
        # the server describes them with their url and serves no file for them (its usual 404)
        pytest.importorskip("fastapi")
        from fastapi.testclient import TestClient

        from counterclip.server.app import create_app
        from counterclip.server.settings import ServerSettings

        first = int(engine.index.images.ids[0])
        with TestClient(create_app(engine, ServerSettings(workers=1)), base_url="http://127.0.0.1") as client:
            response = client.get(f"/images/{first}")
            assert response.status_code == 404
            described = client.post("/search", json={"text": "a red circle", "k": 24}).json()["images"]
            assert described[str(first)]["has_file"] is False and described[str(first)]["url"] == urls[0]
            kept = str(int(engine.index.images.ids[10]))
            assert described[kept]["has_file"] is True


def _rewrite_meta(path: Path, rows: slice) -> None:
    pq.write_table(pq.read_table(path).slice(rows.start, rows.stop - rows.start), path)


def _expect_refused(built: Path, src: Path, model, match: str) -> None:
    target = built / f"refused-{src.name}"
    with pytest.raises(InputError, match=match):
        import_clip_retrieval(src, target, model, progress=False)
    assert not target.exists()
    assert not [p for p in built.iterdir() if p.name.startswith(f".{target.name}")]  # no temp left


def test_metadata_rows_not_matching_vectors(built, model) -> None:
    src = _copy(built, "bad_rows")
    _rewrite_meta(src / "metadata/metadata_1.parquet", slice(0, 9))
    _expect_refused(built, src, model, r"metadata_1\.parquet has 9 rows, .*img_emb_1\.npy has 10")


def test_wrong_width(built, model) -> None:
    src = _copy(built, "bad_width")
    x = np.load(src / "img_emb/img_emb_2.npy")
    np.save(src / "img_emb/img_emb_2.npy", np.concatenate([x, x[:, :1]], axis=1))
    _expect_refused(
        built, src, model, rf"img_emb_2\.npy: vectors of width {x.shape[1] + 1}, the model embeds to"
    )


def test_nan_vector_in_a_later_partition(built, model) -> None:
    src = _copy(built, "bad_nan")
    x = np.load(src / "text_emb/text_emb_2.npy")
    x[3, 5] = np.nan
    np.save(src / "text_emb/text_emb_2.npy", x)
    _expect_refused(built, src, model, r"text_emb_2\.npy row 3: NaN or infinite")


def test_vector_not_normalised(built, model) -> None:
    src = _copy(built, "bad_norm")
    x = np.load(src / "img_emb/img_emb_1.npy")
    x[7] *= 2
    np.save(src / "img_emb/img_emb_1.npy", x)
    _expect_refused(built, src, model, r"img_emb_1\.npy row 7: norm 2\.0")


def test_missing_metadata(built, model) -> None:
    src = _copy(built, "bad_meta")
    (src / "metadata/metadata_1.parquet").unlink()
    _expect_refused(built, src, model, r"metadata_1\.parquet is missing")


def test_text_rows_not_matching(built, model) -> None:
    src = _copy(built, "bad_text")
    np.save(src / "text_emb/text_emb_0.npy", np.load(src / "text_emb/text_emb_0.npy")[:8])
    _expect_refused(built, src, model, r"text_emb_0\.npy has 8 rows, .*img_emb_0\.npy has 10")


def test_into_a_non_empty_directory_is_refused(built, model) -> None:
    (built / "full").mkdir()
    (built / "full/keep.txt").write_text("mine")
    with pytest.raises(InputError, match="exists and is not empty"):
        import_clip_retrieval(built / "out1", built / "full", model, progress=False)
    assert (built / "full/keep.txt").read_text() == "mine"


def test_update_of_an_imported_index_is_refused(built, model) -> None:
    import_clip_retrieval(built / "out1", built / "imp_upd", model, progress=False)
    with pytest.raises(IndexFormatError, match="imported from clip-retrieval"):
        update_index(built / "imp_upd", progress=False)


def test_on_disk_lists_are_files_of_the_generation(tmp_path, model) -> None:
    """A memory budget below the vectors' size gives on-disk inverted lists: the .ivfdata file is listed
    and checksummed like every file of the generation, `check` verifies it, and damage to it is named."""
    from counterclip.index_builder import check_index

    n, dim = 3000, model.embed_dim
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(40, dim))
    img = centres[rng.integers(0, 40, n)] + 0.3 * rng.normal(size=(n, dim))
    img = (img / np.linalg.norm(img, axis=1, keepdims=True)).astype(np.float32)
    src = tmp_path / "out"
    for sub in ("img_emb", "metadata"):
        (src / sub).mkdir(parents=True)
    np.save(src / "img_emb" / "img_emb_0.npy", img)
    table = pa.table(
        {
            "image_path": pa.array([f"gone/{i:05d}.jpg" for i in range(n)], pa.string()),
            "url": pa.array([f"https://example.org/{i}.jpg" for i in range(n)], pa.string()),
        }
    )
    pq.write_table(table, src / "metadata" / "metadata_0.parquet")
    summary = import_clip_retrieval(src, tmp_path / "idx", model, memory_budget=1000, progress=False)
    assert summary.images_index["io"] == "ondisk"
    lists = summary.images_index["memory"]["files"][1]
    with Index.open(tmp_path / "idx") as idx:
        assert lists in idx.manifest.files and lists.endswith(".ivfdata")
        ids = idx.images.ids[:50]
        _, got = idx.images.search(idx.images.vectors(ids), 1)
        assert (got[:, 0] == ids).mean() >= 0.95  # each stored vector finds itself
    report = check_index(tmp_path / "idx")
    assert not report.damaged and report.files == len(Index.open(tmp_path / "idx").manifest.files)
    path = tmp_path / "idx" / lists
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(data))
    assert lists in check_index(tmp_path / "idx").damaged
