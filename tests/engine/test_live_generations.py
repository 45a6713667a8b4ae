"""A long-running engine follows the index's generations: queries after an update see the new one
without a restart, a query in flight keeps its own, old generations are closed and collected."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from counterclip.engine import Engine
from counterclip.index_builder import build_index, update_index
from counterclip.shapes import generate_folder


def _add_images(folder: Path, tmp: Path, n: int, seed: int, prefix: str) -> list[Path]:
    """Copy ``n`` new shapes images into ``folder`` under new names."""
    source = tmp / f"src-{prefix}"
    generate_folder(source, n=n, seed=seed, size=48)
    added = []
    for path in sorted(source.glob("*.png")):
        target = folder / f"{prefix}-{path.name}"
        shutil.copyfile(path, target)
        added.append(target)
    return added


@pytest.fixture()
def live_index(tmp_path: Path) -> tuple[Path, Path]:
    folder, index_dir = tmp_path / "images", tmp_path / "idx"
    generate_folder(folder, n=12, seed=11, size=48)
    build_index(folder, index_dir, model="bundled:shapes", device="cpu", progress=False)
    return folder, index_dir


def test_a_query_after_an_update_reads_the_new_generation(live_index, tmp_path: Path) -> None:
    folder, index_dir = live_index
    with Engine.open(index_dir, device="cpu") as engine:
        before = engine.index
        first = engine.search(text="a red circle", k=5)
        assert engine.index.generation == 1 and engine.index.images.count == 12
        added = _add_images(folder, tmp_path, 4, seed=12, prefix="new")
        (folder / "000000.png").unlink()
        update_index(index_dir, progress=False)

        result = engine.search(text="a red circle", k=20)  # no reopen, no restart
        assert engine.index is not before and engine.index.generation == 2
        assert engine.index.images.count == 15
        new_ids = {engine.index.image_id_for_path(p) for p in added}
        assert None not in new_ids and new_ids <= {i.id for i in result.items}
        assert engine.index.image_id_for_path(folder / "000000.png") is None
        assert len(first.items) == 5
        # the old generation was closed when the switch found no query using it, and its files went
        assert before._closed
        assert not (index_dir / "items-000001.sqlite").exists()
        # the new generation's statistics are its own (the image sample covers the added images)
        assert len(engine.resources().typical_sample(engine.index.images)) == 15


def test_a_pinned_query_keeps_its_generation_through_an_update(live_index, tmp_path: Path) -> None:
    folder, index_dir = live_index
    with Engine.open(index_dir, device="cpu") as engine:
        with engine.pinned() as held:
            ids_before = np.asarray(held.images.ids).copy()
            _add_images(folder, tmp_path, 3, seed=13, prefix="more")
            update_index(index_dir, progress=False)
            # inside the pin every call reads generation 1, even one that checks for updates
            inner = engine.search(text="a blue square", k=30)
            assert engine.index is held and held.generation == 1
            assert {i.id for i in inner.items} <= set(ids_before.tolist())
            assert (index_dir / "items-000001.sqlite").exists()  # still held
        after = engine.search(text="a blue square", k=30)
        assert engine.index.generation == 2 and len(after.items) == 15
        assert held._closed and not (index_dir / "items-000001.sqlite").exists()


def test_threads_querying_through_updates_never_fail(live_index, tmp_path: Path) -> None:
    folder, index_dir = live_index
    failures: list[BaseException] = []
    seen: set[int] = set()
    stop = threading.Event()
    with Engine.open(index_dir, device="cpu") as engine:

        def reader() -> None:
            texts = ["a red circle", "a green star", "a blue square"]
            n = 0
            while not stop.is_set():
                try:
                    with engine.pinned() as index:
                        result = engine.search(text=texts[n % 3], k=8)
                        valid = set(np.asarray(index.images.ids).tolist())
                        # one generation: every answer is an id of the generation the query pinned
                        assert {i.id for i in result.items} <= valid
                        seen.add(index.generation)
                except BaseException as exc:  # noqa: BLE001 - reported below
                    failures.append(exc)
                    return
                n += 1

        threads = [threading.Thread(target=reader) for _ in range(3)]
        for thread in threads:
            thread.start()
        for round_ in range(3):
            _add_images(folder, tmp_path, 2, seed=20 + round_, prefix=f"r{round_}")
            update_index(index_dir, progress=False)
        engine.search(text="a red circle", k=1)
        stop.set()
        for thread in threads:
            thread.join()
        assert not failures, failures[0]
        assert engine.index.generation == 4 and engine.index.images.count == 18
    assert 4 in seen
    # every generation but the current one is collected once the engine is closed
    assert sorted(p.name for p in index_dir.glob("items-*.sqlite")) == ["items-000004.sqlite"]


def test_a_generation_that_will_not_open_leaves_the_old_one_serving(
    live_index, tmp_path: Path, monkeypatch, caplog
) -> None:
    folder, index_dir = live_index
    with Engine.open(index_dir, device="cpu") as engine:
        old = engine.index
        _add_images(folder, tmp_path, 2, seed=14, prefix="x")
        update_index(index_dir, progress=False)
        calls = []

        def broken_reopen() -> None:
            calls.append(1)
            raise OSError("simulated: permission denied")

        monkeypatch.setattr(old, "reopen", broken_reopen)
        with caplog.at_level("WARNING"):
            for _ in range(3):
                assert len(engine.search(text="a red circle", k=3).items) == 3
        assert engine.index is old and len(calls) == 1  # tried once per generation, not per query
        assert "generation 2 could not be opened" in caplog.text


def test_a_pil_copy_of_an_indexed_file_embeds_like_the_file(live_index) -> None:
    folder, index_dir = live_index
    with Engine.open(index_dir, device="cpu") as engine:
        path = folder / "000003.png"
        rgba = Image.open(path).convert("RGBA")  # a decoded PIL image in another mode
        stored = engine.index.images.vectors([engine.index.image_id_for_path(path)])[0]
        for query in (Image.open(path), rgba):
            vector = engine.resolve_image(query).vector
            assert float(vector @ stored) >= 0.9999


def test_the_server_reports_and_answers_from_the_new_generation(live_index, tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from counterclip.server.app import create_app
    from counterclip.server.settings import ServerSettings

    folder, index_dir = live_index
    with Engine.open(index_dir, device="cpu") as engine:
        app = create_app(engine, ServerSettings(workers=1))
        with TestClient(app, base_url="http://127.0.0.1") as client:
            health = client.get("/health").json()
            assert (health["generation"], health["images"]) == (1, 12)
            added = _add_images(folder, tmp_path, 3, seed=15, prefix="web")
            update_index(index_dir, progress=False)
            health = client.get("/health").json()
            assert (health["generation"], health["images"]) == (2, 15)
            assert client.get("/info").json()["generation"] == 2
            new_id = engine.index.image_id_for_path(added[0])
            response = client.post("/search", json={"text": "a red circle", "k": 15})
            assert response.status_code == 200
            assert new_id in {item["id"] for item in response.json()["items"]}
            assert str(new_id) in response.json()["images"]
