"""The engine over every store: on the same vectors with exact search, LanceDB and Qdrant give the same
search hits and the same counterfactual answers as FAISS Flat, with and without ``--where``; a build into
a store resumes, refuses a store of another width or model before writing, follows updates, and
``check`` reports drift. (A tiny random open_clip model; the shapes world in two folders.)"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from counterclip.cli import run
from counterclip.engine import Engine
from counterclip.errors import IndexFormatError
from counterclip.index_builder import Index, build_index, update_index
from counterclip.index_builder.stores import publish
from counterclip.index_builder.stores.drift import check_store
from counterclip.index_builder.stores.side import SIDE_NAME, is_store_index, read_side
from counterclip.index_builder.stores.store_index import StoreIndex, open_index
from counterclip.index_builder.stores.uri import open_store
from counterclip.models import load_model

pytest.importorskip("lancedb")
pytest.importorskip("qdrant_client")

STORES = ("lancedb", "qdrant+local")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory, tiny_openclip):
    """A built FAISS index over two folders of shapes, and a copy of it published to each store."""
    from counterclip.shapes import generate_folder

    base = tmp_path_factory.mktemp("stores")
    generate_folder(base / "photos" / "a", n=24, seed=3, size=48)
    generate_folder(base / "photos" / "b", n=16, seed=4, size=48)
    (base / "vocab.txt").write_text(
        "a red circle\na blue square\na green star on the left\na small purple cross\n"
    )
    build_index(
        base / "photos",
        base / "faiss",
        model=tiny_openclip,
        vocab=base / "vocab.txt",
        device="cpu",
        progress=False,
    )
    dirs = {"faiss": base / "faiss"}
    for kind in STORES:
        shutil.copytree(base / "faiss", base / kind)
        publish.publish_to_store(base / kind, f"{kind}://{base}/{kind}-db/photos")
        dirs[kind] = base / kind
    model = load_model(Index.open(base / "faiss").model_spec, device="cpu")
    return base, dirs, model


def answers(engine: Engine, photos, where: str | None = None) -> dict:
    """What the engine answers to a fixed set of queries, as plain values."""
    query = photos / "a" / "000002.png"
    found = {
        "text": engine.search(text="a blue square", k=6, where=where),
        "image": engine.search(image=str(query), k=6, where=where),
    }
    if where is None:
        found["captions"] = engine.search(text="a red circle", k=4, collection="captions")
    asked = {
        "increase": {"text": "a blue square"},
        "decrease": {"text": "a red circle", "mode": "decrease"},
        "flip": {"mode": "flip", "labels": ["a red circle", "a blue square", "a green star"]},
    }
    if where is None:
        asked["text-side"] = {"text": "a red circle", "side": "text", "mode": "decrease"}
    for name, kwargs in asked.items():
        found[name] = engine.counterfactuals(image=str(query), k=3, where=where, **kwargs)
    out = {}
    for name, result in found.items():
        items = [
            (i.id, i.path, i.text, getattr(i, "verdict", None), round(i.score_after, 4)) for i in result.items
        ]
        baselines = {k: [i.id for i in v] for k, v in getattr(result, "baselines", {}).items()}
        out[name] = (items, baselines, getattr(result, "stale", None))
    return out


@pytest.mark.parametrize("kind", STORES)
def test_every_store_gives_faiss_flats_answers(shapes, kind) -> None:
    base, dirs, model = shapes
    with Engine(Index.open(dirs["faiss"]), model) as engine:
        expected = answers(engine, base / "photos")
    assert Index.open(dirs["faiss"]).images.info.kind == "flat"
    with Engine(open_index(dirs[kind]), model) as engine:
        assert isinstance(engine.index, StoreIndex)
        got = answers(engine, base / "photos")
    assert got == expected
    assert all(
        expected[name][0] for name in ("text", "increase", "text-side")
    )  # the comparison says something


@pytest.mark.parametrize("kind", ("faiss", *STORES))
def test_where_restricts_candidates_on_every_store(shapes, kind) -> None:
    base, dirs, model = shapes
    with Engine(Index.open(dirs["faiss"]), model) as engine:
        expected = answers(engine, base / "photos", where='folder = "b"')
    with Engine(open_index(dirs[kind]), model) as engine:
        got = answers(engine, base / "photos", where='folder = "b"')
        assert engine.search(text="a blue square", k=100, where='folder = "b" and width > 1000').items == []
    assert got == expected
    paths = [item[1] for name in ("text", "image", "increase", "flip") for item in expected[name][0]]
    assert paths and all(p.startswith("b/") for p in paths)


def test_engine_open_reads_the_store_the_build_filled(shapes) -> None:
    _, dirs, _ = shapes
    side = read_side(dirs["lancedb"])
    assert side.kind == "built" and side.ann["images"]["kind"] == "exact"
    with Index.open(dirs["faiss"]) as idx:
        assert side.counts == {"images": 40, "captions": idx.captions.count} and idx.captions.count > 4
    assert side.ann["images"]["recall_at_k"] == 1.0
    with Engine.open(dirs["lancedb"], device="cpu") as engine:
        assert isinstance(engine.index, StoreIndex) and engine.index.images.count == 40
    assert not is_store_index(dirs["faiss"])


def test_a_build_into_a_store_resumes(shapes, tmp_path, monkeypatch) -> None:
    base, dirs, model = shapes
    index_dir, uri = tmp_path / "idx", f"lancedb://{tmp_path}/db/photos"
    shutil.copytree(dirs["faiss"], index_dir)
    monkeypatch.setattr(publish, "BATCH", 16)
    real_add, calls = open_store(uri).__class__.add, []

    def dies_on_the_second_batch(self, ids, vectors, payloads):
        calls.append(len(ids))
        if len(calls) == 2:
            raise KeyboardInterrupt  # a kill between two batches
        return real_add(self, ids, vectors, payloads)

    monkeypatch.setattr(open_store(uri).__class__, "add", dies_on_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        publish.publish_to_store(index_dir, uri)
    assert not is_store_index(index_dir) and open_store(uri).count() == 16  # nothing half-published
    monkeypatch.setattr(open_store(uri).__class__, "add", real_add)
    done = publish.publish_to_store(index_dir, uri)
    assert done["images"]["added"] == 24 and done["images"]["count"] == 40
    with Engine(open_index(index_dir), model) as engine:
        resumed = answers(engine, base / "photos")
    with Engine(open_index(dirs["lancedb"]), model) as engine:
        assert resumed == answers(engine, base / "photos")


@pytest.mark.parametrize("kind", STORES)
def test_another_width_or_model_is_refused_before_writing(shapes, tmp_path, kind) -> None:
    _, dirs, _ = shapes
    index_dir = tmp_path / "idx"
    shutil.copytree(dirs["faiss"], index_dir)
    narrow = open_store(f"{kind}://{tmp_path}/db/narrow")
    narrow.create(7)
    narrow.add(np.array([1]), np.ones((1, 7), np.float32), [{"path": "x"}])
    narrow.close()
    with pytest.raises(IndexFormatError, match="width 7"):
        publish.publish_to_store(index_dir, f"{kind}://{tmp_path}/db/narrow")
    other = open_store(f"{kind}://{tmp_path}/db/other")
    dim = read_side(dirs[kind]).model.embed_dim
    other.create(dim)
    wrong = np.random.default_rng(0).standard_normal((3, dim)).astype(np.float32)
    other.add(np.array([1, 2, 3]), wrong / np.linalg.norm(wrong, axis=1, keepdims=True), [{}] * 3)
    other.close()
    with pytest.raises(IndexFormatError, match="another model made them"):
        publish.publish_to_store(index_dir, f"{kind}://{tmp_path}/db/other")
    assert not (index_dir / SIDE_NAME).exists()
    assert open_store(f"{kind}://{tmp_path}/db/other").count() == 3  # nothing written


def test_check_reports_a_store_that_drifted(shapes, tmp_path, capsys) -> None:
    _, dirs, _ = shapes
    index_dir, uri = tmp_path / "idx", f"qdrant+local://{tmp_path}/db/photos"
    shutil.copytree(dirs["faiss"], index_dir)
    publish.publish_to_store(index_dir, uri)
    assert check_store(index_dir).drift == []
    assert run(["check", str(index_dir)]) == 0
    side = read_side(index_dir)
    store = open_store(uri)
    store.delete(np.array(side.sample_ids[:1]))
    store.add(np.array(side.sample_ids[1:2]), -store.fetch(np.array(side.sample_ids[1:2])), [{"path": "x"}])
    store.close()
    report = check_store(index_dir)
    assert (
        report.missing == 1 and report.changed == 1 and report.counts["images"] == {"recorded": 40, "now": 39}
    )
    capsys.readouterr()
    assert run(["check", str(index_dir)]) == 2
    err = capsys.readouterr().err
    assert "drifted" in err and "counterclip update" in err and "Traceback" not in err


def test_an_update_carries_into_the_store(shapes, tmp_path, tiny_openclip) -> None:
    from counterclip.shapes import generate_folder

    base, _, _ = shapes
    photos, index_dir, uri = tmp_path / "photos", tmp_path / "idx", f"lancedb://{tmp_path}/db/photos"
    generate_folder(photos, n=6, seed=7, size=48)
    summary = build_index(photos, index_dir, model=tiny_openclip, device="cpu", progress=False, store=uri)
    assert summary.store["images"]["count"] == 6 and "store" in summary.to_dict()
    generate_folder(tmp_path / "more", n=2, seed=8, size=48)
    for name in ("000000.png", "000001.png"):
        shutil.copy(tmp_path / "more" / name, photos / f"new-{name}")
    (photos / "000003.png").unlink()
    summary = update_index(index_dir, progress=False)
    assert (summary.store["images"]["added"], summary.store["images"]["removed"]) == (2, 1)
    assert read_side(index_dir).counts["images"] == 7 and check_store(index_dir).drift == []
