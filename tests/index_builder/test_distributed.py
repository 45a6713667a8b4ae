"""Embedding beyond one process: N shard workers + merge, and Ray Data, each equal to a local build
(same ids, vectors within 1e-6)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from counterclip.errors import InputError
from counterclip.index_builder import build_index
from counterclip.index_builder.distributed import (
    RayEmbedder,
    ShardSetEmbedder,
    embed_shard,
    merge_shard_sets,
    parse_shard,
)
from tests.index_builder.ibhelpers import snapshot


def _assert_equal(a: dict, b: dict) -> None:
    """Same images by path with the same ids and vectors to 1e-6, same captions, errors and counts."""
    assert a["counts"] == b["counts"] and a["errors"] == b["errors"]
    assert sorted(a["images"]) == sorted(b["images"])
    for path, (id_a, vec_a, *rest_a) in a["images"].items():
        id_b, vec_b, *rest_b = b["images"][path]
        assert (id_a, rest_a) == (id_b, rest_b), path
        np.testing.assert_allclose(vec_a, vec_b, atol=1e-6, err_msg=path)
    assert sorted(a["captions"]) == sorted(b["captions"])
    for text, (vec_a, _) in a["captions"].items():
        np.testing.assert_allclose(vec_a, b["captions"][text][0], atol=1e-6)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from counterclip.shapes import generate_folder

    root = tmp_path_factory.mktemp("dist")
    generate_folder(root / "shapes", n=23, seed=8, size=48)
    (root / "shapes/broken.png").write_bytes(b"not a png")  # skipped with its reason, by every build
    return root


@pytest.fixture(scope="module")
def local(folder, model):
    build_index(folder / "shapes", folder / "local", model=model, progress=False, workers=0)
    return snapshot(folder / "local")


def test_parse_shard() -> None:
    assert parse_shard("2/8") == (2, 8)
    for bad in ("8/8", "1", "-1/3", "a/b"):
        with pytest.raises(InputError, match="--shard must be i/N"):
            parse_shard(bad)


def test_shard_workers_and_merge_equal_a_local_build(folder, model, local) -> None:
    n = 3
    sets = []
    for i in (2, 0, 1):  # any order, any scheduler
        description = embed_shard(folder / "shapes", folder / f"part{i}", (i, n), model)
        sets.append(folder / f"part{i}")
        assert description["shard"] == [i, n]
    files = [json.loads((folder / f"part{i}/shardset.json").read_text())["files"] for i in range(n)]
    assert sum(files) == 24 and max(files) - min(files) <= 1  # every N-th file: balanced, disjoint
    summary = merge_shard_sets(folder / "merged", sets, progress=False, device="cpu")
    assert summary.indexed == 23 and summary.skipped == 1
    _assert_equal(local, snapshot(folder / "merged"))


def test_merge_refuses_an_incomplete_or_mixed_split(folder, model) -> None:
    embed_shard(folder / "shapes", folder / "w0of2", (0, 2), model)
    with pytest.raises(InputError, match=r"missing worker\(s\) 1/2"):
        ShardSetEmbedder([folder / "w0of2"])
    embed_shard(folder / "shapes", folder / "w1of3", (1, 3), model)
    with pytest.raises(InputError, match="is worker 1/3, others of /2"):
        ShardSetEmbedder([folder / "w0of2", folder / "w1of3"])
    with pytest.raises(InputError, match="is not a shard set"):
        ShardSetEmbedder([folder / "shapes"])


def test_a_file_changed_after_its_worker_is_embedded_again(tmp_path, model) -> None:
    from PIL import Image

    from counterclip.shapes import generate_folder

    generate_folder(tmp_path / "f", n=6, seed=2, size=48)
    sets = [
        embed_shard(tmp_path / "f", tmp_path / f"p{i}", (i, 2), model) and tmp_path / f"p{i}"
        for i in range(2)
    ]
    Image.new("RGB", (48, 48), (250, 10, 10)).save(tmp_path / "f/000003.png")  # changed since
    merge_shard_sets(tmp_path / "merged", sets, progress=False, device="cpu")
    build_index(tmp_path / "f", tmp_path / "local", model=model, progress=False)
    _assert_equal(snapshot(tmp_path / "local"), snapshot(tmp_path / "merged"))


def test_ray_build_equals_a_local_build(folder, model, local) -> None:
    ray = pytest.importorskip("ray", reason="Ray is not installed (extra counterclip[ray])")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        embedder = RayEmbedder(actors=1)
        build_index(folder / "shapes", folder / "ray", model=model, progress=False, embedder=embedder)
    finally:
        ray.shutdown()
    _assert_equal(local, snapshot(folder / "ray"))
