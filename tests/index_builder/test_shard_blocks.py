"""Block checksums of embedding shards: a flipped sign bit keeps a row unit length but is found by the
checksum of its block when the row is first read: a one-line error naming the file, never a score.
Indexes written before block checksums are checked against their whole-file checksum, and an update
adds the block checksums."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import xxhash
from ibhelpers import SMALL_SHARDS, make_folder

from counterclip.cli import run
from counterclip.errors import IndexDamagedError
from counterclip.index_builder import Index, build_index, update_index
from counterclip.index_builder.checksums import BLOCK_BYTES, checksum_file
from counterclip.index_builder.manifest import Manifest
from counterclip.index_builder.shards import ShardReader, shard_names, write_shard


def flip_sign(path: Path, row: int, column: int = 0) -> None:
    """Flip the sign bit of one float of a ``.npy`` vector file (the row stays unit length)."""
    array = np.load(path)
    offset = path.stat().st_size - array.nbytes + (row * array.shape[1] + column) * 4
    data = bytearray(path.read_bytes())
    data[offset + 3] ^= 0x80  # little-endian float32: the sign is the top bit of the last byte
    path.write_bytes(bytes(data))
    flipped = np.load(path)
    assert flipped[row, column] == -array[row, column]
    assert np.isclose(np.linalg.norm(flipped[row]), 1.0, atol=1e-6)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, model) -> Path:
    root = tmp_path_factory.mktemp("photos")
    make_folder(root, 12)
    index_dir = tmp_path_factory.mktemp("built") / "idx"
    build_index(root, index_dir, model=model, progress=False, config=SMALL_SHARDS)
    return index_dir


def located(index_dir: Path, item_id: int) -> tuple[str, int]:
    manifest = Manifest.read(index_dir)
    with sqlite3.connect(index_dir / manifest.db_file) as conn:
        shard, row = conn.execute("SELECT shard, row FROM images WHERE id = ?", (item_id,)).fetchone()
    return shard_names("images", shard)[0], row


def test_the_manifest_records_each_blocks_checksum(built: Path) -> None:
    manifest = Manifest.read(built)
    vector_files = [n for n in manifest.files if n.startswith("embeddings/") and not n.endswith(".ids.npy")]
    assert vector_files and all(n.endswith(".npy") for n in vector_files)
    for name in vector_files:
        entry = manifest.files[name]
        data = (built / name).read_bytes()
        digests = [
            xxhash.xxh3_64_hexdigest(data[i : i + BLOCK_BYTES]) for i in range(0, len(data), BLOCK_BYTES)
        ]
        assert entry["block_bytes"] == BLOCK_BYTES and entry["blocks"] == "".join(digests)
        assert entry["xxh3"] == xxhash.xxh3_128_hexdigest(data) and entry["size"] == len(data)
    for name in manifest.files:
        if name.endswith(".ids.npy"):
            assert "blocks" not in manifest.files[name]


def test_a_flipped_sign_bit_is_an_error_naming_the_file(built: Path, tmp_path: Path, capsys) -> None:
    index_dir = tmp_path / "idx"
    shutil.copytree(built, index_dir)
    with Index.open(index_dir) as idx:
        target = int(idx.images.ids[5])
        others = [
            int(i) for i in idx.images.ids if located(index_dir, int(i))[0] != located(index_dir, target)[0]
        ]
        clean = idx.images.vectors(others)
    name, row = located(index_dir, target)
    flip_sign(index_dir / name, row)
    with Index.open(index_dir) as idx:
        with pytest.raises(IndexDamagedError) as info:
            idx.images.vectors([target])
        message = str(info.value)
        assert name in message and "block 0 (bytes 0-" in message and "does not match its checksum" in message
        assert len(message.splitlines()) == 1
        assert np.array_equal(idx.images.vectors(others), clean)  # the other shards still answer
    assert run(["search", str(index_dir), "--image", f"#{target}", "-k", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and name in err and len(err.splitlines()) == 1


def test_only_the_blocks_of_the_rows_read_are_checked(tmp_path: Path) -> None:
    directory = tmp_path / "embeddings"
    directory.mkdir()
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sums = write_shard(directory, "images", 7, vectors, np.arange(3000, dtype=np.int64))
    name = shard_names("images", 7)[0]
    assert sums[name].block_count == -(-sums[name].size // BLOCK_BYTES) == 6
    path = directory / "images-00007.npy"
    assert sums[name] == checksum_file(path, blocks=True)
    offset = sums[name].size - vectors.nbytes
    flip_sign(path, 2000, 3)
    bad_block = (offset + 2000 * 128 + 12) // BLOCK_BYTES
    reader = ShardReader(directory, "images", sums)
    good = reader.rows(np.array([7, 7]), np.array([0, 2999]), 32)
    assert np.array_equal(good, vectors[[0, 2999]])
    with pytest.raises(IndexDamagedError, match=rf"images-00007.npy.*block {bad_block} \(bytes"):
        reader.rows(np.array([7]), np.array([2000]), 32)
    with pytest.raises(IndexDamagedError, match="images-00007.npy"):  # many rows: one read, checked too
        reader.rows(np.full(3000, 7), np.arange(3000), 32)
    unchecked = ShardReader(directory, "images")  # without recorded checksums: unit length only
    assert unchecked.rows(np.array([7]), np.array([2000]), 32)[0, 3] == -vectors[2000, 3]


def strip_blocks(index_dir: Path) -> None:
    """Make the index look written before block checksums: none in the manifest or the items file."""
    manifest = Manifest.read(index_dir)
    db = index_dir / manifest.db_file
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE file_blocks")
    conn.close()
    files = {n: {"size": e["size"], "xxh3": e["xxh3"]} for n, e in manifest.files.items()}
    files[manifest.db_file] = checksum_file(db).to_dict()
    dataclasses.replace(manifest, files=files).write(index_dir)


def test_an_index_without_block_checksums_is_checked_whole_and_gets_them_on_update(
    built: Path, tmp_path: Path
) -> None:
    old = tmp_path / "old"
    shutil.copytree(built, old)
    strip_blocks(old)
    assert "blocks" not in json.dumps(Manifest.read(old).files)
    damaged = tmp_path / "damaged"
    shutil.copytree(old, damaged)
    with Index.open(damaged) as idx:
        target = int(idx.images.ids[0])
    name, row = located(damaged, target)
    flip_sign(damaged / name, row)
    with Index.open(damaged) as idx, pytest.raises(IndexDamagedError, match=f"{name}.*checksum mismatch"):
        idx.images.vectors([target])

    with Index.open(old) as idx:
        before = idx.images.vectors(idx.images.ids)
    update_index(old, progress=False)
    manifest = Manifest.read(old)
    vector_files = [n for n in manifest.files if n.startswith("embeddings/") and not n.endswith(".ids.npy")]
    assert all(
        manifest.files[n]["blocks"] == checksum_file(old / n, blocks=True).blocks for n in vector_files
    )
    with Index.open(old) as idx:
        assert np.array_equal(idx.images.vectors(idx.images.ids), before)
