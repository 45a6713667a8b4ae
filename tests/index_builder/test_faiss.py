"""FAISS: exact search equals a numpy oracle, ANN kinds reach their measured recall, the kind follows the size."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from ibhelpers import SMALL_SHARDS, make_folder

from counterclip.errors import InputError
from counterclip.index_builder import Index, IndexCfg, build_index
from counterclip.index_builder.faiss_index import (
    build_and_measure,
    build_from_blocks,
    choose_factory,
    exact_knn,
    recall_at_k,
    search,
)


def synthetic(n: int, d: int, nq: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded clustered unit vectors (like faiss' SyntheticDataset): (xb, ids, xq)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, d))
    xb = centres[rng.integers(0, 20, n)] + 0.6 * rng.normal(size=(n, d))
    xq = centres[rng.integers(0, 20, nq)] + 0.6 * rng.normal(size=(nq, d))
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    ids = rng.permutation(10 * n)[:n].astype(np.int64) + 1000  # sparse, unordered ids
    return xb.astype(np.float32), ids, xq.astype(np.float32)


def blocks_of(xb: np.ndarray, ids: np.ndarray, size: int = 300):
    return lambda: ((xb[i : i + size], ids[i : i + size]) for i in range(0, len(xb), size))


def oracle(xb: np.ndarray, ids: np.ndarray, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = xq @ xb.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[order]


CFG = IndexCfg(recall_sample=300)


def test_flat_equals_numpy_oracle() -> None:
    xb, ids, xq = synthetic(2000, 32, 50)
    index = build_from_blocks(blocks_of(xb, ids), len(xb), 32, "Flat", CFG)
    dist, labels = search(index, xq, 10)
    want_d, want_i = oracle(xb, ids, xq, 10)
    np.testing.assert_array_equal(labels, want_i)
    np.testing.assert_allclose(dist, want_d, atol=1e-4)


def test_blockwise_exact_knn_equals_oracle() -> None:
    xb, ids, xq = synthetic(1000, 16, 20, seed=1)
    dist, labels = exact_knn(xq, blocks_of(xb, ids, 128), 7)
    want_d, want_i = oracle(xb, ids, xq, 7)
    np.testing.assert_array_equal(labels, want_i)
    np.testing.assert_allclose(dist, want_d, atol=1e-4)


@pytest.mark.parametrize("factory", ["HNSW16,Flat", "IVF16,Flat", "IVF16,SQ8"])
def test_ann_kinds_reach_the_target_recall(factory: str) -> None:
    xb, ids, xq = synthetic(3000, 32, 100, seed=2)
    cfg = dataclasses.replace(CFG, recall_target=0.95)
    index, info = build_and_measure(blocks_of(xb, ids), len(xb), 32, cfg, override=factory)
    assert info.factory == factory and info.ntotal == 3000
    assert info.recall_at_k is not None and info.recall_at_k >= 0.95
    assert info.search_params  # the tuned efSearch / nprobe is recorded
    # recall on fresh queries (not the stored-vector sample the tuning used), against the numpy oracle
    from counterclip.index_builder.faiss_index import make_search_params

    dist, labels = search(index, xq, 10, make_search_params(info.kind, info.search_params))
    want_d, want_i = oracle(xb, ids, xq, 10)
    measured = recall_at_k(dist, labels, want_d, want_i, exact_scores=factory.endswith("Flat"))
    assert measured >= 0.9, measured
    assert set(labels.ravel()) <= set(ids.tolist())


def test_recall_at_k_by_hand() -> None:
    exact_i = np.array([[1, 2, 3, 4]])
    exact_d = np.array([[0.9, 0.8, 0.7, 0.6]], np.float32)
    approx_i = np.array([[1, 3, 9, 8]])
    approx_d = np.array([[0.9, 0.7, 0.6, 0.1]], np.float32)
    assert recall_at_k(approx_d, approx_i, exact_d, exact_i, exact_scores=False) == 0.5
    # with exact scores, id 9 ties the 4th exact score (a duplicate vector): it counts
    assert recall_at_k(approx_d, approx_i, exact_d, exact_i, exact_scores=True) == 0.75


def test_kind_follows_the_size() -> None:
    cfg = IndexCfg(exact_max=100, hnsw_max=1000)
    assert choose_factory(100, 32, cfg) == ("flat", "Flat")
    assert choose_factory(101, 32, cfg) == ("hnsw", "HNSW32,Flat")
    kind, factory = choose_factory(1_000_000, 32, cfg)
    assert kind == "ivf" and factory == "IVF4096,SQ8"
    assert choose_factory(5, 32, cfg, override="IVF8,PQ4") == ("ivf", "IVF8,PQ4")
    assert choose_factory(5, 32, cfg, override="IDMap2,HNSW8") == ("hnsw", "HNSW8")


def test_bad_factory_string_is_a_clear_error() -> None:
    xb, ids, _ = synthetic(100, 8, 1)
    with pytest.raises(InputError, match="invalid FAISS index kind 'Nonsense42'"):
        build_and_measure(blocks_of(xb, ids), 100, 8, CFG, override="Nonsense42")
    with pytest.raises(InputError, match="needs at least 256 vectors"):
        build_and_measure(blocks_of(xb, ids), 100, 8, CFG, override="IVF256,Flat")


def test_search_pads_with_minus_one() -> None:
    xb, ids, xq = synthetic(3, 8, 2)
    index = build_from_blocks(blocks_of(xb, ids), 3, 8, "Flat", CFG)
    dist, labels = search(index, xq, 5)
    assert (labels[:, 3:] == -1).all() and np.isneginf(dist[:, 3:]).all()
    assert sorted(labels[0, :3]) == sorted(ids)
    with pytest.raises(AssertionError):
        search(index, xq[:, :4], 5)


# --- on built indexes ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    make_folder(root, 60)
    return root


def test_index_exact_search_equals_brute_force(folder: Path, model, tmp_path: Path) -> None:
    build_index(folder, tmp_path / "idx", model=model, progress=False, config=SMALL_SHARDS)
    with Index.open(tmp_path / "idx") as idx:
        assert idx.manifest.faiss["images"]["factory"] == "Flat"
        assert idx.manifest.faiss["images"]["recall_at_10"] == 1.0
        ids = idx.images.ids
        xb = idx.images.vectors(ids)
        np.testing.assert_allclose(np.linalg.norm(xb, axis=1), 1.0, atol=1e-5)
        xq = np.random.default_rng(0).normal(size=(7, idx.dim)).astype(np.float32)
        xq /= np.linalg.norm(xq, axis=1, keepdims=True)
        dist, labels = idx.images.search(xq, 10)
        want_d, want_i = oracle(xb, ids, xq, 10)
        np.testing.assert_array_equal(labels, want_i)
        np.testing.assert_allclose(dist, want_d, atol=1e-4)


def test_large_collection_gets_hnsw_with_measured_recall(folder: Path, model, tmp_path: Path) -> None:
    cfg = dataclasses.replace(SMALL_SHARDS, exact_max=20, hnsw_m=8)
    summary = build_index(folder, tmp_path / "idx", model=model, progress=False, config=cfg)
    assert summary.images_index["kind"] == "hnsw" and summary.images_index["factory"] == "HNSW8,Flat"
    assert summary.images_index["recall_at_10"] >= cfg.recall_target
    assert summary.images_index["recall_queries"] == 60
    with Index.open(tmp_path / "idx") as idx:
        info = idx.manifest.faiss["images"]
        assert info["search_params"]["efSearch"] >= 16
        ids = idx.images.ids
        xb = idx.images.vectors(ids)
        dist, labels = idx.images.search(xb, 10)
        want_d, want_i = oracle(xb, ids, xb, 10)
        assert recall_at_k(dist, labels, want_d, want_i, exact_scores=True) >= cfg.recall_target


def test_index_kind_override(folder: Path, model, tmp_path: Path) -> None:
    summary = build_index(
        folder, tmp_path / "idx", model=model, progress=False, config=SMALL_SHARDS, index_kind="IVF4,Flat"
    )
    assert summary.images_index["factory"] == "IVF4,Flat"
    assert summary.images_index["search_params"]["nprobe"] in (1, 2, 4)
    assert summary.captions_index["factory"] == "Flat"  # the override is for the image index
    with Index.open(tmp_path / "idx") as idx:
        assert idx.manifest.settings.index_kind == "IVF4,Flat"


def test_empty_index_searches_to_padding(model, tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos/broken.jpg").write_bytes(b"nope")
    summary = build_index(tmp_path / "photos", tmp_path / "idx", model=model, progress=False)
    assert summary.indexed == 0 and summary.skipped == 1 and summary.images_index["recall_at_10"] is None
    with Index.open(tmp_path / "idx") as idx:
        dist, labels = idx.images.search(np.ones((2, idx.dim), np.float32), 3)
        assert (labels == -1).all() and np.isneginf(dist).all()
        assert idx.images.ids.shape == (0,)
