"""Captions: sidecars, captions files (CSV, JSONL), vocabulary; duplicates embedded once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ibhelpers import make_folder

from counterclip.errors import InputError
from counterclip.index_builder import Index, build_index


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    make_folder(folder, 4)
    make_folder(folder, 2, start=10, sub="sub")
    return folder


def test_all_sources_and_duplicates_once(root: Path, tmp_path: Path, model) -> None:
    (root / "img0000.txt").write_text("a red square\n\n  a   red square  \nthe first photo\n")
    (root / "sub/img0010.txt").write_text("a red square\n")
    (root / "orphan.txt").write_text("describes no image\n")  # no image of that name: ignored
    captions = tmp_path / "captions.csv"
    captions.write_text(
        'path,caption\nimg0001.jpg,"a blue circle"\nsub/img0011.jpg,a red square\n,a free one\n'
    )
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("# comment\na red square\na dog\n\n")
    summary = build_index(root, tmp_path / "idx", model=model, captions=captions, vocab=vocab, progress=False)
    texts = ["a red square", "the first photo", "a blue circle", "a free one", "a dog"]
    assert summary.captions == len(texts) and summary.captions_embedded == len(texts)
    with Index.open(tmp_path / "idx") as idx:
        metas = idx.captions.meta(idx.captions.ids)
        by_text = {m["text"]: m for m in metas}
        assert sorted(by_text) == sorted(texts)
        ids = {
            rel: idx.image_id_for_path(rel)
            for rel in ("img0000.jpg", "img0001.jpg", "sub/img0010.jpg", "sub/img0011.jpg")
        }
        square = by_text["a red square"]
        assert square["source"] == "sidecar" and square["image_id"] == ids["img0000.jpg"]
        assert square["image_ids"] == sorted(
            [ids["img0000.jpg"], ids["sub/img0010.jpg"], ids["sub/img0011.jpg"]]
        )
        assert by_text["a blue circle"]["source"] == "captions-file"
        assert by_text["a blue circle"]["image_id"] == ids["img0001.jpg"]
        assert (
            by_text["a free one"]["image_id"] is None and by_text["a free one"]["source"] == "captions-file"
        )
        assert by_text["a dog"]["source"] == "vocab" and by_text["a dog"]["image_id"] is None
        # vectors are the model's text embeddings; caption search equals the oracle
        cids = idx.captions.ids
        stored = idx.captions.vectors(cids)
        want = model.encode_texts([m["text"] for m in metas]).numpy()
        np.testing.assert_allclose(stored, want, atol=1e-5)
        dist, labels = idx.captions.search(want[:2], 3)
        order = np.argsort(-(want[:2] @ stored.T), axis=1)[:, :3]
        np.testing.assert_array_equal(labels, cids[order])


def test_jsonl_captions_and_unknown_paths(root: Path, tmp_path: Path, model) -> None:
    captions = tmp_path / "captions.jsonl"
    lines = [
        {"path": "img0002.jpg", "caption": "two"},
        {"path": str(root / "img0003.jpg"), "caption": "three (absolute path)"},
        {"path": "missing.jpg", "caption": "no such image"},
    ]
    captions.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    summary = build_index(root, tmp_path / "idx", model=model, captions=captions, progress=False)
    assert summary.captions == 3
    assert any("not in the index" in w for w in summary.warnings)
    with Index.open(tmp_path / "idx") as idx:
        by_text = {m["text"]: m for m in idx.captions.meta(idx.captions.ids)}
        assert by_text["two"]["image_id"] == idx.image_id_for_path("img0002.jpg")
        assert by_text["three (absolute path)"]["image_id"] == idx.image_id_for_path("img0003.jpg")
        assert by_text["no such image"]["image_id"] is None


def test_bad_captions_files_are_clear_errors(root: Path, tmp_path: Path, model) -> None:
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("file,text\na.jpg,hello\n")
    with pytest.raises(InputError, match="needs a header with 'path' and 'caption'"):
        build_index(root, tmp_path / "idx1", model=model, captions=bad_csv, progress=False)
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"path": "a.jpg", "caption": "ok"}\n{not json}\n')
    with pytest.raises(InputError, match="line 2: invalid JSON"):
        build_index(root, tmp_path / "idx2", model=model, captions=bad_jsonl, progress=False)
    with pytest.raises(InputError, match="does not exist"):
        build_index(root, tmp_path / "idx3", model=model, vocab=tmp_path / "nope.txt", progress=False)


def test_caption_changes_follow_the_sources(root: Path, tmp_path: Path, model) -> None:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("alpha\nbeta\n")
    build_index(root, tmp_path / "idx", model=model, vocab=vocab, progress=False)
    with Index.open(tmp_path / "idx") as idx:
        alpha = next(m["id"] for m in idx.captions.meta(idx.captions.ids) if m["text"] == "alpha")
    vocab.write_text("alpha\ngamma\n")
    summary = build_index(
        root, tmp_path / "idx", model=model, progress=False
    )  # the recorded vocabulary is re-read
    assert summary.captions == 2 and summary.captions_embedded == 1
    with Index.open(tmp_path / "idx") as idx:
        by_text = {m["text"]: m["id"] for m in idx.captions.meta(idx.captions.ids)}
        assert set(by_text) == {"alpha", "gamma"} and by_text["alpha"] == alpha
        assert idx.captions.info.ntotal == 2
