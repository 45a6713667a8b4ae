"""Build stages on their own, with hand-made inputs: the diff of a scan against the rows, compaction of
shards holding removed rows, the decode options a new index fixes, and the room a run says it needs."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from counterclip.errors import DiskFullError
from counterclip.index_builder.build_compact import compact
from counterclip.index_builder.build_plan import fresh_decode_options
from counterclip.index_builder.build_scan import apply_diff
from counterclip.index_builder.build_state import BuildState
from counterclip.index_builder.config import IndexCfg
from counterclip.index_builder.progress import Progress
from counterclip.index_builder.shards import load_shard, shard_paths, write_shard
from counterclip.index_builder.store import Store


def _scan_table(store: Store, rows: list[tuple[str, int | None, int | None, str | None]]) -> None:
    store.conn.execute(
        "CREATE TEMP TABLE scan (path_key BLOB PRIMARY KEY, path TEXT NOT NULL, size INTEGER, "
        "mtime_ns INTEGER, error TEXT)"
    )
    store.conn.executemany(
        "INSERT INTO scan VALUES (?, ?, ?, ?, ?)", [(os.fsencode(p), p, s, m, e) for p, s, m, e in rows]
    )


def test_diff_of_a_scan_against_the_rows(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    (root / "touched.jpg").write_bytes(b"same bytes")
    (root / "edited.jpg").write_bytes(b"new bytes!")
    same = hashlib.sha256(b"same bytes").hexdigest()
    store = Store(tmp_path / "items.sqlite")
    store.conn.executemany(
        "INSERT INTO images (id, path_key, path, size, mtime_ns, sha256, status, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (1, b"kept.jpg", "kept.jpg", 10, 100, "a", "indexed", None),
            (2, b"gone.jpg", "gone.jpg", 10, 100, "b", "indexed", None),
            (3, b"touched.jpg", "touched.jpg", 10, 100, same, "indexed", None),  # mtime moved, same bytes
            (4, b"edited.jpg", "edited.jpg", 10, 100, same, "indexed", None),  # same size, other bytes
            (5, b"locked.jpg", "locked.jpg", 10, 100, None, "error", "permission denied"),  # retried
        ],
    )
    _scan_table(
        store,
        [
            ("kept.jpg", 10, 100, None),
            ("touched.jpg", 10, 200, None),
            ("edited.jpg", 10, 200, None),
            ("locked.jpg", 10, 100, None),
            ("b-new.jpg", 5, 300, None),
            ("a-new.jpg", 5, 300, None),
        ],
    )
    with store.transaction():
        diff = apply_diff(store, root)
    assert diff == {"scanned": 6, "added": 2, "changed": 1, "removed": 1, "unchanged": 3}
    rows = {
        bytes(key).decode(): (item_id, status, mtime)
        for item_id, key, status, mtime in store.conn.execute(
            "SELECT id, path_key, status, mtime_ns FROM images"
        )
    }
    assert rows["kept.jpg"] == (1, "indexed", 100)
    assert rows["touched.jpg"] == (3, "indexed", 200)  # same id, the new mtime
    assert rows["locked.jpg"] == (5, "pending", 100)  # a transient error is tried again, same id
    assert "gone.jpg" not in rows
    # new ids, never reused, in path order; the edited file is new content: a new id, pending
    assert (
        rows["a-new.jpg"][0] < rows["b-new.jpg"][0] and min(rows["a-new.jpg"][0], rows["edited.jpg"][0]) > 5
    )
    assert {rows[p][1] for p in ("a-new.jpg", "b-new.jpg", "edited.jpg")} == {"pending"}
    store.close()


def test_compaction_keeps_live_rows_and_published_shards(tmp_path: Path) -> None:
    state = BuildState(tmp_path, Progress(False))
    state.emb_dir.mkdir()
    store = Store(tmp_path / "items.sqlite")
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((12, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sums = {}
    for number in range(3):  # 3 shards of 4 rows
        ids = np.arange(1 + 4 * number, 5 + 4 * number)
        sums.update(write_shard(state.emb_dir, "images", number, vectors[ids - 1], ids))
    with store.transaction():
        store.conn.executemany(
            "INSERT INTO images (id, path_key, path, status, shard, row) VALUES (?, ?, ?, 'indexed', ?, ?)",
            [(i, f"{i}.jpg".encode(), f"{i}.jpg", (i - 1) // 4, (i - 1) % 4) for i in range(1, 13)],
        )
        store.conn.execute("DELETE FROM images WHERE id IN (2, 7)")  # removed from shards 0 and 1
        store.set_file_checksums(sums)
        store.set_meta(next_shard_images=3)
    state.published = {"embeddings/images-00000.npy"}  # shard 0 is listed by a published generation
    compact(state, store, "images", shard_size=4)
    assert store.referenced_shards("images") == {2: 4, 3: 4, 4: 2}  # shards 0 and 1 rewritten as 3, 4
    for item_id, shard, row in store.conn.execute("SELECT id, shard, row FROM images"):
        got, ids = load_shard(state.emb_dir, "images", shard)
        assert ids[row] == item_id
        np.testing.assert_array_equal(got[row], vectors[item_id - 1])
    assert shard_paths(state.emb_dir, "images", 0)[0].exists()  # published: it leaves with its generation
    assert not shard_paths(state.emb_dir, "images", 1)[0].exists()  # this run's own: deleted now
    assert store.get_meta("next_shard_images") == 5
    store.close()


def test_decode_options_of_a_new_index() -> None:
    cfg = IndexCfg(name="t", max_side=4096, downscale=True)  # the fast decode, opted in
    model = SimpleNamespace(vision_geometry=SimpleNamespace(image_size=(224, 196)))
    options = fresh_decode_options(cfg, model)
    assert (options.max_side, options.min_side) == (4096, 196)  # JPEG scaled down to the model's side
    assert fresh_decode_options(IndexCfg(name="t", downscale=False), model).min_side is None
    assert fresh_decode_options(cfg, SimpleNamespace()).min_side is None  # a stand-in without geometry


def test_disk_full_says_what_the_run_needs(tmp_path: Path) -> None:
    state = BuildState(tmp_path, Progress(False), base_gen=3, dim=4, items_estimate=1000, base_bytes=10_000)
    wal = min(4 << 20, 2000 * 1000 + (64 << 10))
    assert state.space_needed() == int(10_000 * 1.1 + 1000 * (2.2 * (4 * 4 + 8) + 1000) + wal)
    error = state.os_error(OSError(28, "No space left on device", str(tmp_path / "x")))
    assert isinstance(error, DiskFullError)
    assert f"needs about {state.space_needed() / 1e6:.1f} MB" in str(error)
    assert f"generation 3 stays readable; free space and run `counterclip update {tmp_path}`" in str(error)
