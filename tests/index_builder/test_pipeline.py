"""The embedding pipeline: order kept, bounded in flight, same vectors whatever the workers, shards cut right."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from ibhelpers import SMALL_SHARDS, assert_same_index, make_folder, snapshot

from counterclip.index_builder import Index, build_index
from counterclip.index_builder.pipeline import ShardWriter, ordered_map
from counterclip.index_builder.shards import iterate_shards
from counterclip.index_builder.store import Store


def square(x: int) -> int:
    time.sleep(0.002 * (x % 3))  # finish out of order
    return x * x


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_ordered_map_keeps_order(workers: int) -> None:
    assert list(ordered_map(square, range(40), workers, window=5)) == [x * x for x in range(40)]


def test_ordered_map_bounds_work_in_flight() -> None:
    lock = threading.Lock()
    state = {"now": 0, "max": 0, "pulled": 0}

    def items():
        for i in range(50):
            state["pulled"] += 1
            yield i

    def work(x: int) -> int:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.001)
        with lock:
            state["now"] -= 1
        return x

    consumed = 0
    for _ in ordered_map(work, items(), workers=4, window=6):
        consumed += 1
        assert state["pulled"] - consumed <= 6  # never more than the window ahead of the consumer
    assert state["max"] <= 4


def test_workers_do_not_change_the_index(model, tmp_path: Path) -> None:
    root = tmp_path / "photos"
    make_folder(root, 21)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    snapshots = []
    for i, workers in enumerate([0, 1, 3]):
        cfg = dataclasses.replace(SMALL_SHARDS, workers=workers, batch_size=5)
        build_index(root, tmp_path / f"idx{i}", model=model, progress=False, config=cfg)
        snapshots.append(snapshot(tmp_path / f"idx{i}"))
    assert_same_index(snapshots[0], snapshots[1])
    assert_same_index(snapshots[0], snapshots[2])
    # and each stored vector equals the model on that image alone (batching changes nothing)
    with Index.open(tmp_path / "idx0") as idx:
        for rel, (_, vector, *_) in snapshots[0]["images"].items():
            alone = model.encode_images(model.preprocess(idx.load_image(rel).image)).numpy()
            np.testing.assert_allclose(vector, alone, atol=2e-5, err_msg=rel)


def test_shard_writer_cuts_shards_and_points_rows(tmp_path: Path) -> None:
    store = Store(tmp_path / "items-000001.sqlite")
    try:
        with store.transaction() as conn:
            conn.executemany(
                "INSERT INTO images (path_key, path, status) VALUES (?, ?, 'pending')",
                [(f"{i}.jpg".encode(), f"{i}.jpg") for i in range(20)],
            )
        (tmp_path / "embeddings").mkdir()
        writer = ShardWriter(store, tmp_path / "embeddings", "images", shard_size=8, dim=4)
        vectors = np.arange(1, 81, dtype=np.float32).reshape(20, 4)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)  # stored vectors are unit length
        ids = list(range(1, 21))
        writer.add(vectors[:5], ids[:5], [{"width": 1}] * 5)
        writer.add(vectors[5:], ids[5:], [{"width": 2}] * 15)
        writer.fail(21, "broken")
        writer.close()
        assert store.referenced_shards("images") == {0: 8, 1: 8, 2: 4}
        blocks = list(iterate_shards(tmp_path / "embeddings", "images", [0, 1, 2]))
        np.testing.assert_array_equal(np.concatenate([b[0] for b in blocks]), vectors)
        np.testing.assert_array_equal(np.concatenate([b[1] for b in blocks]), ids)
        rows = store.conn.execute("SELECT id, shard, row, width FROM images ORDER BY id").fetchall()
        assert rows[0] == (1, 0, 0, 1) and rows[9] == (10, 1, 1, 2) and rows[19] == (20, 2, 3, 2)
        assert store.get_meta("next_shard_images") == 3
        odd = list(iterate_shards(tmp_path / "embeddings", "images", [0, 1, 2], split=(2, 1)))
        assert len(odd) == 1 and odd[0][1][0] == 9  # (nsplit, rank) = (2, 1): the second shard only
    finally:
        store.close()
