"""Memory budget: the choice per size, every FAISS variant against an exact IndexFlatIP oracle (recall per
query kind, measured on fresh queries), memory-mapped and on-disk opening, and a folder build."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from counterclip.errors import InputError
from counterclip.index_builder import budget, faiss_tune
from counterclip.index_builder.budget import (
    Plan,
    iterate_arrays,
    open_faiss,
    parse_size,
    path_points,
    plan_index,
    write_faiss,
)
from counterclip.index_builder.config import IndexCfg
from counterclip.index_builder.faiss_index import FaissInfo, make_search_params, search


def clustered(n: int, d: int, seed: int, clusters: int = 40, spread: float = 0.35) -> np.ndarray:
    """Unit vectors in clusters on the sphere (structure like real embeddings)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, d))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_parse_size() -> None:
    assert parse_size("2GB") == 2_000_000_000
    assert parse_size("1.5G") == 1_500_000_000
    assert parse_size("800MB") == 800_000_000
    assert parse_size("512MiB") == 512 * 1024**2
    assert parse_size("4096") == 4096
    assert parse_size(None) is None
    with pytest.raises(InputError, match="invalid memory size 'lots'"):
        parse_size("lots")


def test_plan_follows_size_and_budget() -> None:
    cfg = IndexCfg()
    d = 512
    # 10k vectors: exact search fits 100 MB
    assert plan_index(10_000, d, 100_000_000, cfg).factory == "Flat"
    # 200k vectors: exact is 410 MB; HNSW32 adds the graph: fits 500 MB
    p = plan_index(200_000, d, 500_000_000, cfg)
    assert (p.kind, p.factory, p.io) == ("hnsw", "HNSW32,Flat", "mmap")
    # 1M vectors: 4-bit fast-scan codes of 4 dimensions each in 1024 lists (RAM: codes, the ids in the lists
    # and the id map, quantizer), then the re-ranking stage the budget holds
    fast = 1_000_000 * (64 + 8 + 8) + 1024 * 4 * 512
    p = plan_index(1_000_000, d, 2_200_000_000, cfg)  # exact vectors fit: memory-mapped
    assert (p.factory, p.wrapper, p.io) == ("IVF1024,PQ128x4fs,RFlat", "IDMap", "mmap")
    assert p.ram_bytes == fast + 1_000_000 * 4 * 512
    p = plan_index(1_000_000, d, 600_000_000, cfg)  # 8-bit re-ranking codes fit
    assert (p.factory, p.wrapper, p.ram_bytes) == (
        "IVF1024,PQ128x4fs,Refine(SQ8)",
        "IDMap",
        fast + 512_000_000,
    )
    p = plan_index(
        1_000_000, d, 200_000_000, cfg
    )  # the codes fit; exact vectors from disk, beyond the budget
    assert (p.factory, p.ram_bytes) == ("IVF1024,PQ128x4fs,RFlat", fast)
    assert p.disk_bytes - p.ram_bytes == 1_000_000 * 4 * 512
    p = plan_index(1_000_000, d, 60_000_000, cfg)  # coarser codes (8 dimensions each)
    assert (p.factory, p.wrapper) == ("IVF1024,PQ64x4fs,RFlat", "IDMap")
    # 1M vectors in 10 MB: nothing compressed fits: on-disk inverted lists
    p = plan_index(1_000_000, d, 10_000_000, cfg)
    assert (p.factory, p.io, p.ram_bytes) == ("IVF2048,SQ8", "ondisk", 2048 * 4 * 512)
    # without a budget: by size, read into RAM, as before
    p = plan_index(1_000_000, d, None, cfg)
    assert (p.kind, p.io) == ("hnsw", "ram")


def test_path_points_walk_the_geodesic() -> None:
    a = np.array([[1.0, 0.0, 0.0]], np.float32)
    b = np.array([[0.0, 1.0, 0.0]], np.float32)
    pts = path_points(a, b, per_path=4)
    angles = np.arccos(np.clip(pts @ a[0], -1, 1))
    steps = angles / budget.PATH_STEP
    assert np.allclose(steps, np.round(steps), atol=1e-4)  # whole steps of the engine's angle
    assert np.allclose(pts[:, 2], 0) and np.allclose(np.linalg.norm(pts, axis=1), 1, atol=1e-6)
    assert steps.max() <= budget.PATH_MAX_STEPS and steps.min() >= 1


# (budget in bytes, expected factory, expected io) for n=6000, d=32 vectors of the images, 6000 captions
N, D = 6000, 32
L = budget.nlist_for(N)  # 128
LF = budget.nlist_fast_scan(N)  # 64
VARIANTS = [
    (10**9, "Flat", "mmap"),
    (int(N * (4 * D + 8 * 32 + 16) + 8 * N) * 2 + 10, "HNSW32,Flat", "mmap"),
    ((N * (D // 8 + 16 + 4 * D) + LF * 4 * D) * 2 + 10, f"IVF{LF},PQ{D // 4}x4fs,RFlat", "mmap"),
    ((N * (D // 8 + 16) + LF * 4 * D) * 2 + 10, f"IVF{LF},PQ{D // 4}x4fs,RFlat", "mmap"),
    ((N * (D // 16 + 16) + LF * 4 * D) * 2 + 10, f"IVF{LF},PQ{D // 8}x4fs,RFlat", "mmap"),
    (1000, f"IVF{L},SQ8", "ondisk"),
]


@pytest.mark.parametrize(("total", "factory", "io"), VARIANTS, ids=[f"{f}-{t}" for t, f, _ in VARIANTS])
def test_every_variant_against_exact_oracle(tmp_path, total: int, factory: str, io: str) -> None:
    images = clustered(N, D, seed=1)
    captions = clustered(N, D, seed=1)[np.random.default_rng(5).permutation(N)] + 0.25 * clustered(N, D, 9)
    captions /= np.linalg.norm(captions, axis=1, keepdims=True)
    ids = np.arange(N, dtype=np.int64) * 3 + 7  # ids are not positions
    exact_max = 10**9 if factory == "Flat" else N - 1  # above exact_max: the most exact approximate kind
    cfg = IndexCfg(exact_max=exact_max, recall_sample=400, memory_budget=total, recall_target=0.95)
    path = tmp_path / "images.faiss"
    info = write_faiss(
        iterate_arrays(images, ids, 1000),
        N,
        D,
        cfg,
        "auto",
        path,
        "images",
        (iterate_arrays(captions, np.arange(N), 1000), N),
    )
    assert (info.factory, info.io) == (factory, io)
    assert set(info.recall_by_query) == {"stored", "text_to_image", "path"}
    for measured in info.recall_by_query.values():
        assert measured["recall_at_10"] >= 0.95
    info = FaissInfo.from_dict(info.to_dict())  # as the manifest gives it back
    index = open_faiss(path, info)
    assert index.ntotal == N
    if io == "ondisk":
        lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
        assert isinstance(lists, faiss.OnDiskInvertedLists) and lists.read_only
        assert len(info.memory["files"]) == 2 and (tmp_path / info.memory["files"][1]).is_file()
    # fresh queries of every kind (not the ones tuned on), against brute force
    oracle = faiss.IndexFlatIP(D)
    oracle.add(images)
    rng = np.random.default_rng(123)
    fresh = {
        "stored": images[rng.choice(N, 300, replace=False)],
        "text": captions[rng.choice(N, 300, replace=False)],
        "path": path_points(images[rng.choice(N, 60)], captions[rng.choice(N, 60)], 5),
    }
    params = make_search_params(info.kind, info.search_params)
    for name, xq in fresh.items():
        d_true, i_true = oracle.search(xq, 10)
        dist, got = search(index, xq, 10, params)
        hits = np.mean([len(set(ids[t]) & set(g)) / 10 for t, g in zip(i_true, got, strict=True)])
        assert hits >= 0.93, (name, hits)
        if factory == "Flat":  # exact: the same ids, distances to 4 decimals
            assert (got == ids[i_true]).mean() > 0.999
            np.testing.assert_allclose(dist, d_true, atol=1e-4)


def test_ondisk_rebuild_replaces_the_lists_file(tmp_path) -> None:
    x = clustered(3000, 16, seed=2)
    cfg = IndexCfg(memory_budget=1000, recall_sample=100)
    path = tmp_path / "images.faiss"
    first = write_faiss(iterate_arrays(x, np.arange(3000)), 3000, 16, cfg, "auto", path, "images", None)
    second = write_faiss(iterate_arrays(x, np.arange(3000)), 3000, 16, cfg, "auto", path, "images", None)
    assert first.memory["files"][1] != second.memory["files"][1]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(second.memory["files"])
    index = open_faiss(path, second)
    _, got = index.search(x[:5], 1)
    assert got[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_plan_to_dict_names_the_built_factory() -> None:
    p = Plan("ivf", "IVF64,PQ8x4fs,RFlat", "IDMap", "mmap", 1, 2, 3, "why")
    assert p.to_dict()["factory"] == "IDMap,IVF64,PQ8x4fs,RFlat"


def test_folder_build_with_budget_records_both_query_kinds(tmp_path, model) -> None:
    from counterclip.index_builder import Index, build_index
    from tests.index_builder.ibhelpers import make_folder

    root = tmp_path / "photos"
    names = make_folder(root, 12)
    for name in names:
        (root / name).with_suffix(".txt").write_text(f"a photo number {name[:3]}")
    summary = build_index(root, tmp_path / "idx", model=model, progress=False, memory_budget="1GB")
    assert summary.images_index["io"] == "mmap"
    assert set(summary.images_index["recall_by_query"]) == {"stored", "text_to_image", "path"}
    assert set(summary.captions_index["recall_by_query"]) == {"stored", "image_to_text", "path"}
    with Index.open(tmp_path / "idx") as idx:
        assert idx.manifest.settings.config["memory_budget"] == 1_000_000_000
        vecs = idx.images.vectors(idx.images.ids)
        _, got = idx.images.search(vecs, 1)
        assert got[:, 0].tolist() == idx.images.ids.tolist()


def test_per_query_hits_agree_with_recall_at_k() -> None:
    from counterclip.index_builder.faiss_index import recall_at_k

    rng = np.random.default_rng(4)
    for exact_scores in (False, True):
        exact_d = -np.sort(-rng.random((50, 10)).astype(np.float32), axis=1)
        exact_i = rng.permutation(1000)[:500].reshape(50, 10)
        exact_i[3, 7:] = -1  # fewer than k vectors
        got_i = np.where(
            rng.random((50, 10)) < 0.6, exact_i[:, rng.permutation(10)], rng.integers(0, 1000, (50, 10))
        )
        got_i[5, 6:] = -1
        got_d = exact_d + np.where(rng.random((50, 10)) < 0.2, 0.0, -0.5).astype(np.float32)
        hits, truths = faiss_tune.hits_per_query(got_d, got_i, exact_d, exact_i, exact_scores)
        assert truths[3] == 7 and truths.sum() == 497
        assert hits.sum() / truths.sum() == pytest.approx(
            recall_at_k(got_d, got_i, exact_d, exact_i, exact_scores)
        )


def test_tune_probe_decides_as_the_full_measurement() -> None:
    """The sequential tuning (a probe of 100 queries per kind, all queries when unsure) picks the nprobe
    that measuring every query at every rung picks, and records recall >= target."""
    n, d = 8000, 32
    x = clustered(n, d, seed=3)
    y = clustered(n, d, seed=4)
    ids = np.arange(n)
    cfg = IndexCfg(recall_sample=600, recall_target=0.95)
    index = faiss.index_factory(d, "IVF64,SQ8", faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add_with_ids(x, ids)
    queries = budget.query_sets(iterate_arrays(x, ids), n, (iterate_arrays(y, ids), n), "images", cfg)
    params, report = budget.tune(index, "ivf", "IVF64,SQ8", queries, iterate_arrays(x, ids), cfg)
    oracle = faiss.IndexFlatIP(d)
    oracle.add(x)
    full_choice = None
    for nprobe in (1, 2, 4, 8, 16, 32, 64):
        ok = True
        for xq in queries.values():
            _, truth = oracle.search(xq, 10)
            _, got = index.search(xq, 10, params=faiss.SearchParametersIVF(nprobe=nprobe))
            ok &= np.mean([len(set(t) & set(g)) / 10 for t, g in zip(truth, got, strict=True)]) >= 0.95
        if ok:
            full_choice = nprobe
            break
    assert params == {"nprobe": full_choice}
    assert all(v["recall_at_10"] >= 0.95 for v in report.values())


def test_reranking_depth_adds_rows_for_large_k(tmp_path) -> None:
    """A search for more results than the tuning measured re-ranks k plus the tuned extra rows, not k times
    the depth, and still finds the exact top k."""
    assert make_search_params("ivf", {"nprobe": 4, "k_factor": 8}, k=5).k_factor == 8
    assert make_search_params("ivf", {"nprobe": 4, "k_factor": 8}, k=10).k_factor == 8
    assert make_search_params("ivf", {"nprobe": 4, "k_factor": 8}, k=64).k_factor == (64 + 70) / 64
    n, d = 6000, 32
    images = clustered(n, d, seed=3)
    cfg = IndexCfg(exact_max=n - 1, recall_sample=300, memory_budget=n * (d // 8 + 16) + 64 * 4 * d + 10)
    path = tmp_path / "images.faiss"
    info = write_faiss(iterate_arrays(images, np.arange(n)), n, d, cfg, "auto", path, "images", None)
    assert info.factory.endswith("x4fs,RFlat") and info.search_params["k_factor"] > 1
    index = open_faiss(path, info)
    oracle = faiss.IndexFlatIP(d)
    oracle.add(images)
    xq = images[np.random.default_rng(7).choice(n, 200, replace=False)]
    _, truth = oracle.search(xq, 64)
    _, got = search(index, xq, 64, make_search_params(info.kind, info.search_params, k=64))
    hits = np.mean([len(set(t) & set(g)) / 64 for t, g in zip(truth, got, strict=True)])
    assert hits >= 0.93, hits


@pytest.mark.parametrize(("spread", "factory"), [(1.0, "Refine(SQ8)"), (0.35, "RFlat")])
def test_eight_bit_reranking_or_exact_when_it_misses_the_target(
    tmp_path, spread: float, factory: str
) -> None:
    """A budget that holds 8-bit re-ranking codes but not the vectors: 8-bit re-ranking where it reaches the
    recall target; on tight clusters, where 8-bit codes cannot order near-ties (recall@10 about 0.94 at any
    depth), exact re-ranking from the vectors on disk, past the budget, and the reason says so."""
    n, d = 6000, 32
    images = clustered(n, d, seed=1, spread=spread)
    lists = budget.nlist_fast_scan(n)
    fast = n * (d // 8 + 16) + lists * 4 * d
    cfg = IndexCfg(exact_max=n - 1, recall_sample=400, memory_budget=fast + n * d + 10, recall_target=0.95)
    path = tmp_path / "images.faiss"
    info = write_faiss(iterate_arrays(images, np.arange(n)), n, d, cfg, "auto", path, "images", None)
    assert info.factory == f"IVF{lists},PQ{d // 4}x4fs,{factory}"
    assert info.memory["ram_bytes"] == fast + (n * d if factory == "Refine(SQ8)" else 0)
    assert ("8-bit codes reached recall@10" in info.memory["reason"]) == (factory == "RFlat")
    assert info.recall_by_query["stored"]["recall_at_10"] >= 0.95
    index = open_faiss(path, info)
    oracle = faiss.IndexFlatIP(d)
    oracle.add(images)
    xq = images[np.random.default_rng(11).choice(n, 300, replace=False)]
    _, truth = oracle.search(xq, 10)
    _, got = search(index, xq, 10, make_search_params(info.kind, info.search_params))
    assert np.mean([len(set(t) & set(g)) / 10 for t, g in zip(truth, got, strict=True)]) >= 0.93


def _resident_kb(path) -> int | None:
    """Resident kB of this process's mappings of ``path`` (None without /proc/self/smaps)."""
    import os
    from pathlib import Path

    smaps = Path("/proc/self/smaps")
    if not smaps.exists():
        return None
    total, inside, target = 0, False, os.path.realpath(path)
    for line in smaps.read_text().splitlines():
        head = line.split(maxsplit=5)
        if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            inside = len(head) == 6 and head[5] == target
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_mapped_open_releases_the_pages_read_at_load(tmp_path) -> None:
    """Opening a memory-mapped index leaves none of the file's pages resident (FAISS copied what it reads
    into RAM); searches give the same answers as the index read whole, and bring back only what they touch."""
    n, d = 20_000, 32
    x = clustered(n, d, seed=4)
    lists = budget.nlist_fast_scan(n)
    cfg = IndexCfg(
        exact_max=n - 1,
        hnsw_max=n - 1,
        recall_sample=200,
        memory_budget=n * (4 + 16 + 4 * d) + lists * 128 * 4 + 10,
    )
    path = tmp_path / "images.faiss"
    info = write_faiss(iterate_arrays(x, np.arange(n)), n, d, cfg, "auto", path, "images", None)
    assert (info.io, info.factory) == ("mmap", f"IVF{lists},PQ{d // 4}x4fs,RFlat")
    mapped = open_faiss(path, info)
    resident = _resident_kb(path)
    if resident is not None:
        assert resident == 0
    whole = open_faiss(path, FaissInfo.from_dict({**info.to_dict(), "io": "ram"}))
    params = make_search_params(info.kind, info.search_params)
    got, want = search(mapped, x[:50], 5, params), search(whole, x[:50], 5, params)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0])
    if resident is not None:
        assert 0 < _resident_kb(path) < path.stat().st_size // 1024
