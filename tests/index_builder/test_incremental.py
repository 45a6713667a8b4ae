"""Incremental updates: add / change / delete ends equal to a fresh build; ids are never reused;
removed items leave every structure."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from ibhelpers import (
    SMALL_SHARDS,
    assert_no_debris,
    assert_same_index,
    current_db,
    make_folder,
    noise_image,
    snapshot,
)

from counterclip.index_builder import Index, build_index, update_index


def shard_ids(index_dir: Path) -> list[int]:
    """Every id stored in an image shard."""
    return sorted(int(i) for p in (index_dir / "embeddings").glob("images-*.ids.npy") for i in np.load(p))


@pytest.fixture()
def base(tmp_path: Path, model) -> tuple[Path, Path, Path]:
    root = tmp_path / "photos"
    make_folder(root, 30)
    (root / "img0003.txt").write_text("three on a sidecar\nshared caption\n")
    (root / "img0004.txt").write_text("shared caption\n")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("a cat\na dog\n")
    index_dir = tmp_path / "photos.idx"
    summary = build_index(root, index_dir, model=model, vocab=vocab, progress=False, config=SMALL_SHARDS)
    assert summary.indexed == 30 and summary.captions == 4
    return root, index_dir, vocab


def test_update_after_add_change_delete_equals_fresh_build(base, model, tmp_path: Path) -> None:
    root, index_dir, vocab = base
    before = snapshot(index_dir)
    max_before = max(i for i, *_ in before["images"].values())
    make_folder(root, 10, start=100, sub="new")  # add 10
    for i in (1, 2, 3):  # change 3 (new content, same name)
        noise_image(500 + i).save(root / f"img{i:04d}.jpg", quality=92)
    for i in (10, 11, 12, 13, 4):  # delete 5 (img0004 has a sidecar, which now describes nothing)
        (root / f"img{i:04d}.jpg").unlink()
    os.utime(root / "img0020.jpg", ns=(1, 1))  # touch: same content, other mtime
    (root / "img0005.txt").write_text("a new sidecar\n")

    summary = update_index(index_dir, progress=False)
    assert (summary.added, summary.changed, summary.removed) == (10, 3, 5)
    assert summary.embedded == 13 and summary.indexed == 35
    assert summary.captions_embedded == 1  # only "a new sidecar"; the others are known

    fresh = tmp_path / "fresh.idx"
    build_index(root, fresh, model=model, vocab=vocab, progress=False, config=SMALL_SHARDS)
    after = snapshot(index_dir)
    assert_same_index(after, snapshot(fresh), same_ids=False)

    # ids: unchanged and touched files keep theirs, changed and new files get ids never used before
    for rel, (image_id, *_) in after["images"].items():
        if rel in before["images"] and rel not in {f"img{i:04d}.jpg" for i in (1, 2, 3)}:
            assert image_id == before["images"][rel][0], rel
        else:
            assert image_id > max_before, rel
    # removed items left every structure: shards, FAISS, SQLite, caption links
    with Index.open(index_dir) as idx:
        assert shard_ids(index_dir) == sorted(idx.images.ids.tolist())
        assert idx.images.info.ntotal == 35
        gone = {before["images"][f"img{i:04d}.jpg"][0] for i in (1, 2, 3, 4, 10, 11, 12, 13)}
        assert not gone & set(idx.images.ids.tolist())
        _, labels = idx.images.search(idx.images.vectors(idx.images.ids), 35)
        assert not gone & set(labels.ravel().tolist())
        by_text = {m["text"]: m for m in idx.captions.meta(idx.captions.ids)}
        assert by_text["shared caption"]["image_ids"] == [
            after["images"]["img0003.jpg"][0]
        ]  # img0004 is gone
    assert_no_debris(index_dir)


def test_update_without_changes_is_a_no_op(base) -> None:
    _, index_dir, _ = base
    before = snapshot(index_dir)
    summary = update_index(index_dir, progress=False)
    assert (summary.embedded, summary.added, summary.changed, summary.removed, summary.unchanged) == (
        0,
        0,
        0,
        0,
        30,
    )
    assert summary.stage_seconds.get("embed") is None  # the model was not even loaded
    assert not summary.resumed
    assert_same_index(before, snapshot(index_dir))


def test_build_on_an_existing_index_behaves_like_update(base, model) -> None:
    root, index_dir, _ = base
    (root / "img0000.jpg").unlink()
    make_folder(root, 2, start=200)
    summary = build_index(root, index_dir, model=model, progress=False)
    assert (summary.added, summary.removed, summary.indexed) == (2, 1, 31)
    assert summary.captions == 4  # the recorded vocabulary is kept


def test_ids_are_never_reused(base) -> None:
    root, index_dir, _ = base
    with Index.open(index_dir) as idx:
        old = idx.image_id_for_path("img0007.jpg")
        highest = int(idx.images.ids.max())
    data = (root / "img0007.jpg").read_bytes()
    (root / "img0007.jpg").unlink()
    update_index(index_dir, progress=False)
    (root / "img0007.jpg").write_bytes(data)
    update_index(index_dir, progress=False)
    with Index.open(index_dir) as idx:
        new = idx.image_id_for_path("img0007.jpg")
        assert new != old and new > highest


def test_shards_stay_compact_over_many_updates(base) -> None:
    root, index_dir, _ = base
    for round_ in range(6):
        make_folder(root, 1, start=300 + round_)
        update_index(index_dir, progress=False)
    conn = sqlite3.connect(current_db(index_dir))
    sizes = [n for (n,) in conn.execute("SELECT COUNT(*) FROM images WHERE status='indexed' GROUP BY shard")]
    conn.close()
    assert sum(sizes) == 36
    assert sum(1 for n in sizes if n < SMALL_SHARDS.shard_size // 2) <= 1  # small shards get merged
    assert_no_debris(index_dir)


def test_an_index_inside_its_folder_is_not_scanned(model, tmp_path: Path) -> None:
    root = tmp_path / "photos"
    make_folder(root, 3)
    index_dir = root / "photos.idx"
    build_index(root, index_dir, model=model, progress=False)
    noise_image(1).save(index_dir / "stray.jpg")
    summary = update_index(index_dir, progress=False)
    assert summary.indexed == 3 and summary.added == 0
