"""Generations: a reader keeps answering from the generation it opened while updates run; it sees the
new one when it asks; old files leave only when no reader holds them; a refused update changes nothing."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ibhelpers import SMALL_SHARDS, assert_no_debris, assert_same_index, make_folder, noise_image, snapshot

from counterclip.errors import IndexFormatError, InputError
from counterclip.index_builder import Index, build_index, update_index
from counterclip.index_builder.manifest import Manifest, manifest_name
from counterclip.models import load_model


def answers(idx: Index) -> dict[str, Any]:
    """Everything a reader can ask, from an open `Index` (what must not change under it)."""
    ids = idx.images.ids
    vectors = idx.images.vectors(ids)
    dist, labels = idx.images.search(vectors, 5)
    cids = idx.captions.ids
    return {
        "generation": idx.generation,
        "meta": idx.images.meta(ids),
        "vectors": vectors,
        "search": (np.round(dist, 5), labels),
        "captions": idx.captions.meta(cids),
        "caption_vectors": idx.captions.vectors(cids),
        "caption_search": idx.captions.search(idx.captions.vectors(cids), 3),
        "errors": idx.errors(),
        "by_path": {m["path"]: idx.image_id_for_path(m["path"]) for m in idx.images.meta(ids)},
    }


def assert_same_answers(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["generation"] == b["generation"]
    assert a["meta"] == b["meta"] and a["captions"] == b["captions"] and a["errors"] == b["errors"]
    assert a["by_path"] == b["by_path"]
    np.testing.assert_array_equal(a["vectors"], b["vectors"])
    np.testing.assert_array_equal(a["caption_vectors"], b["caption_vectors"])
    for x, y in zip(a["search"] + a["caption_search"], b["search"] + b["caption_search"], strict=True):
        np.testing.assert_array_equal(x, y)


def change_folder(root: Path, step: int) -> None:
    """Add two files, change one, delete one (a different mix at every step)."""
    make_folder(root, 2, start=100 + 2 * step)
    noise_image(700 + step).save(root / f"img{step:04d}.jpg", quality=92)
    (root / f"img{step + 6:04d}.jpg").unlink()


@pytest.fixture()
def built(tmp_path: Path, model) -> tuple[Path, Path, Path]:
    root = tmp_path / "photos"
    make_folder(root, 14)
    (root / "img0001.txt").write_text("one on a sidecar\n")
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("a cat\na dog\n")
    index_dir = tmp_path / "idx"
    build_index(root, index_dir, model=model, vocab=vocab, progress=False, config=SMALL_SHARDS)
    return root, index_dir, vocab


def test_a_reader_keeps_its_generation_through_an_update(built, model, tmp_path: Path) -> None:
    root, index_dir, vocab = built
    reader = Index.open(index_dir)
    first = answers(reader)
    files_of_first = set(reader.manifest.files)
    assert reader.generation == 1 and reader.newer_generation() is None

    change_folder(root, 0)
    vocab.write_text("a cat\na bird\n")
    summary = update_index(index_dir, progress=False)
    assert summary.generation == 2 and (summary.added, summary.changed, summary.removed) == (2, 1, 1)

    assert_same_answers(answers(reader), first)  # untouched by the update
    assert all((index_dir / name).is_file() for name in files_of_first)  # held: nothing was removed
    assert reader.newer_generation() == 2
    fresh = reader.reopen()
    assert fresh.generation == 2 and fresh.newer_generation() is None
    clean = tmp_path / "clean"
    build_index(root, clean, model=model, vocab=vocab, progress=False, config=SMALL_SHARDS)
    fresh.close()
    assert_same_index(snapshot(index_dir), snapshot(clean), same_ids=False)

    only_first = files_of_first - set(Manifest.read(index_dir).files)
    assert only_first  # the update replaced the items file, the FAISS files and some shards
    assert all((index_dir / name).is_file() for name in only_first)
    reader.close()  # the last reader of generation 1 leaves: its files go
    assert not any((index_dir / name).exists() for name in only_first)
    assert not (index_dir / manifest_name(1)).exists()
    assert_no_debris(index_dir)


def test_old_generations_wait_for_every_reader(built) -> None:
    root, index_dir, _ = built
    first_a, first_b = Index.open(index_dir), Index.open(index_dir)
    change_folder(root, 1)
    update_index(index_dir, progress=False)
    first_a.close()
    assert (index_dir / manifest_name(1)).exists()  # first_b still holds generation 1
    second = Index.open(index_dir)
    change_folder(root, 2)
    update_index(index_dir, progress=False)  # generation 3; 1 and 2 are held
    assert (index_dir / manifest_name(1)).exists() and (index_dir / manifest_name(2)).exists()
    second.close()  # generation 2 goes, 1 stays for first_b
    assert not (index_dir / manifest_name(2)).exists() and (index_dir / manifest_name(1)).exists()
    assert first_b.images.count == 14 and first_b.images.meta(first_b.images.ids[:1])
    first_b.close()
    assert not (index_dir / manifest_name(1)).exists()
    assert_no_debris(index_dir)


def test_queries_under_updates_never_fail_or_mix(built) -> None:
    """Reader threads query in a loop, moving to the newest generation before each query, while the
    main thread runs updates; every answer is checked against the truth of the generation it came from."""
    root, index_dir, _ = built
    truth: dict[int, dict[int, str]] = {}

    def record_truth() -> None:
        with Index.open(index_dir) as idx:
            truth[idx.generation] = {m["id"]: m["path"] for m in idx.images.meta(idx.images.ids)}

    record_truth()
    stop = threading.Event()
    records: list[tuple[int, list[int], list[str]]] = []
    failures: list[str] = []
    lock = threading.Lock()

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        idx = Index.open(index_dir)
        try:
            while not stop.is_set():
                if idx.newer_generation() is not None:
                    fresh = idx.reopen()
                    idx.close()
                    idx = fresh
                try:
                    query = idx.images.vectors([int(rng.choice(idx.images.ids))])
                    dist, labels = idx.images.search(query, 4)
                    found = labels[0][labels[0] >= 0]
                    paths = [m["path"] for m in idx.images.meta(found)]
                    stored = idx.images.vectors(found)
                    np.testing.assert_allclose(dist[0][: len(found)], stored @ query[0], atol=1e-5)
                    with lock:
                        records.append((idx.generation, found.tolist(), paths))
                except Exception as exc:  # noqa: BLE001 - counted, then the test fails
                    with lock:
                        failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            idx.close()

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(3)]
    for thread in threads:
        thread.start()
    try:
        for step in range(3, 7):
            change_folder(root, step)
            update_index(index_dir, progress=False)
            record_truth()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    assert failures == []
    assert len(records) > 20
    mixed = [r for r in records if any(truth[r[0]].get(i) != p for i, p in zip(r[1], r[2], strict=True))]
    assert mixed == []
    assert {r[0] for r in records} >= {5}  # readers moved on to the newest generations
    assert_no_debris(index_dir)  # every reader closed: only the current generation remains


def test_refused_updates_leave_the_index_as_it_was(tmp_path: Path) -> None:
    """A checkpoint changed in place is refused before anything is written (the index stays readable),
    and so is a FAISS kind that cannot work."""
    from tiny_models import write_tiny_openclip

    config, weights = write_tiny_openclip(tmp_path / "model", seed=0)
    root = tmp_path / "photos"
    make_folder(root, 6)
    index_dir = tmp_path / "idx"
    build_index(root, index_dir, model=f"{config}:{weights}", device="cpu", progress=False)
    before = snapshot(index_dir)
    listing = sorted(p.name for p in index_dir.iterdir())
    pointer = (index_dir / "manifest.json").read_bytes()

    original = shutil.copyfile(weights, tmp_path / "original.safetensors")
    _, other = write_tiny_openclip(tmp_path / "other", seed=1)
    shutil.copyfile(other, weights)  # the checkpoint changes in place
    make_folder(root, 2, start=50)  # and there is work to do
    with pytest.raises(IndexFormatError, match="now loads different weights"):
        update_index(index_dir, device="cpu", progress=False)
    with pytest.raises(InputError, match="invalid FAISS index kind 'Bogus9'"):
        update_index(index_dir, model=load_model(f"{config}:{original}", device="cpu"), index_kind="Bogus9")
    assert sorted(p.name for p in index_dir.iterdir()) == listing  # not even a work file was started
    assert (index_dir / "manifest.json").read_bytes() == pointer
    assert_same_index(snapshot(index_dir), before)


def test_newer_generation_follows_the_switch(built) -> None:
    root, index_dir, _ = built
    with Index.open(index_dir) as idx:
        assert [idx.newer_generation() for _ in range(3)] == [None, None, None]
        change_folder(root, 0)
        update_index(index_dir, progress=False)
        assert idx.newer_generation() == 2
        with idx.reopen() as fresh:
            assert fresh.generation == 2 and fresh.images.count == 15
            change_folder(root, 1)
            update_index(index_dir, progress=False)
            assert idx.newer_generation() == fresh.newer_generation() == 3


def test_an_index_of_the_first_format_is_converted_by_update(built, tmp_path: Path) -> None:
    """Format 1 (``items.sqlite``, ``images.faiss``, no generations, no checksums): readers are told to
    update, and the update converts it in place, ids and vectors kept."""
    import json
    import sqlite3

    _, index_dir, _ = built
    before = snapshot(index_dir)
    manifest = Manifest.read(index_dir)
    (index_dir / manifest.db_file).rename(index_dir / "items.sqlite")
    for kind in ("images", "captions"):
        (index_dir / manifest.faiss_file(kind)).rename(index_dir / f"{kind}.faiss")
    (index_dir / manifest_name(1)).unlink()
    conn = sqlite3.connect(index_dir / "items.sqlite")
    conn.execute("DROP TABLE files")
    for kind in ("images", "captions"):
        row = json.loads(
            conn.execute("SELECT value FROM meta WHERE key = ?", (f"faiss_{kind}",)).fetchone()[0]
        )
        old = {"state": row["state"], "info": row["info"]}
        conn.execute("UPDATE meta SET value = ? WHERE key = ?", (json.dumps(old), f"faiss_{kind}"))
    conn.commit()
    conn.close()
    old_manifest = {k: v for k, v in manifest.to_dict().items() if k not in ("files", "checksum")}
    old_manifest["format_version"] = 1
    (index_dir / "manifest.json").write_text(json.dumps(old_manifest))

    with pytest.raises(IndexFormatError, match=r"older counterclip \(format 1.*run `counterclip update"):
        Index.open(index_dir)
    summary = update_index(index_dir, progress=False)
    assert summary.generation == 2 and summary.embedded == 0
    assert not any((index_dir / name).exists() for name in ("items.sqlite", "images.faiss", "captions.faiss"))
    assert_same_index(snapshot(index_dir), before, same_ids=True)
    assert_no_debris(index_dir)
