"""`merge` checks every part against the checksums its worker recorded before it writes anything: a
part with one flipped bit (or an edited items list) is refused by name, and no index is made."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import xxhash

from counterclip.cli import run
from counterclip.errors import IndexDamagedError
from counterclip.index_builder.distributed import ITEMS_FILE, VECTORS_FILE, embed_shard, merge_shard_sets


@pytest.fixture(scope="module")
def parts(tmp_path_factory, model):
    from counterclip.shapes import generate_folder

    root = tmp_path_factory.mktemp("merge")
    generate_folder(root / "f", n=8, seed=6, size=48)
    for i in range(2):
        embed_shard(root / "f", root / f"p{i}", (i, 2), model)
    return root


def copy_parts(parts, tmp_path):
    for i in range(2):
        shutil.copytree(parts / f"p{i}", tmp_path / f"p{i}")
    return [tmp_path / "p0", tmp_path / "p1"]


def test_the_worker_records_its_files_checksums(parts) -> None:
    for i in range(2):
        recorded = json.loads((parts / f"p{i}/shardset.json").read_text())["checksums"]
        for name in (VECTORS_FILE, ITEMS_FILE):
            data = (parts / f"p{i}" / name).read_bytes()
            assert recorded[name] == {"size": len(data), "xxh3": xxhash.xxh3_128_hexdigest(data)}


def test_a_part_with_a_flipped_bit_is_refused_by_name(parts, tmp_path, capsys) -> None:
    sets = copy_parts(parts, tmp_path)
    path = sets[1] / VECTORS_FILE
    vectors = np.load(path)
    data = bytearray(path.read_bytes())
    data[len(data) - vectors.nbytes + 4 * 5 + 3] ^= 0x80  # the sign of row 0, column 5: still unit length
    path.write_bytes(bytes(data))
    assert np.isclose(np.linalg.norm(np.load(path)[0]), 1.0)
    with pytest.raises(IndexDamagedError) as info:
        merge_shard_sets(tmp_path / "idx", sets, progress=False, device="cpu")
    message = str(info.value)
    assert message.startswith(f"shard set {sets[1]}: vectors.npy is damaged (checksum mismatch")
    assert "--shard 1/2" in message and len(message.splitlines()) == 1
    assert not (tmp_path / "idx").exists()  # nothing written
    assert run(["merge", str(tmp_path / "idx2"), str(sets[0]), str(sets[1])]) == 2
    err = capsys.readouterr().err.strip()
    assert "p1" in err and "vectors.npy is damaged" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "idx2").exists()


def test_an_edited_items_list_or_a_missing_file_is_refused(parts, tmp_path) -> None:
    sets = copy_parts(parts, tmp_path)
    items = sets[0] / ITEMS_FILE
    items.write_text(items.read_text().replace('"row": 0', '"row": 1', 1))
    with pytest.raises(IndexDamagedError, match=r"p0: items.jsonl is damaged \(checksum mismatch"):
        merge_shard_sets(tmp_path / "idx", sets, progress=False, device="cpu")
    shutil.rmtree(sets[0])
    shutil.copytree(parts / "p0", sets[0])
    (sets[0] / VECTORS_FILE).unlink()
    with pytest.raises(IndexDamagedError, match=r"p0: vectors.npy is damaged \(missing\)"):
        merge_shard_sets(tmp_path / "idx", sets, progress=False, device="cpu")


def test_a_set_without_checksums_is_checked_for_unit_length(parts, tmp_path, caplog) -> None:
    sets = copy_parts(parts, tmp_path)
    for d in sets:  # as an older version wrote them
        description = json.loads((d / "shardset.json").read_text())
        del description["checksums"]
        (d / "shardset.json").write_text(json.dumps(description))
    vectors = np.load(sets[0] / VECTORS_FILE)
    vectors[1] *= 3.0
    np.save(sets[0] / VECTORS_FILE, vectors)
    with pytest.raises(
        IndexDamagedError, match=r"p0: vectors.npy is damaged \(1 vector\(s\) are not unit length"
    ):
        merge_shard_sets(tmp_path / "idx", sets, progress=False, device="cpu")
    assert "records no checksums" in caplog.text
