"""Attach, do not copy: an app's own collection (its ids, vector name and payload fields) registered with
a side directory only; answers equal FAISS's on the same files; a collection another model made is
refused with measured cosines; the CLI (build --store, search --where, attach, info, check) and the HTTP
service over a store; a server that is down is one line."""

from __future__ import annotations

import socket
import uuid

import numpy as np
import pytest

from counterclip.cli import run
from counterclip.engine import Engine
from counterclip.index_builder import Index, build_index
from counterclip.index_builder.decode import DecodeOptions, load_image
from counterclip.index_builder.stores.side import SAMPLE_NAME, SIDE_NAME, read_side
from counterclip.index_builder.stores.store_index import open_index
from counterclip.models import load_model

pytest.importorskip("lancedb")
pytest.importorskip("qdrant_client")


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_openclip):
    """Shapes files, counterclip's own index of them, and the app's collections of the same files."""
    from counterclip.shapes import generate_folder

    base = tmp_path_factory.mktemp("attach")
    generate_folder(base / "photos", n=30, seed=5, size=48)
    build_index(base / "photos", base / "faiss", model=tiny_openclip, device="cpu", progress=False)
    model = load_model(tiny_openclip, device="cpu")
    files = sorted((base / "photos").glob("*.png"))
    vectors = model.encode_pil([load_image(f, DecodeOptions()).image for f in files]).numpy()
    captions = [f.with_suffix(".txt").read_text().strip() for f in files]
    return base, model, files, vectors, captions


def qdrant_app(path, files, vectors, captions) -> str:
    """An app's Qdrant collection: UUID ids, a named cosine vector, its own payload fields."""
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=str(path))
    client.create_collection(
        "photos", vectors_config={"clip": models.VectorParams(size=vectors.shape[1], distance="Cosine")}
    )
    points = [
        models.PointStruct(
            id=str(uuid.uuid5(uuid.NAMESPACE_URL, str(f))),
            vector={"clip": (2.5 * v).tolist()},  # the app stores them unnormalised
            payload={"file": str(f), "album": "2024" if n % 3 else "2023", "caption": c},
        )
        for n, (f, v, c) in enumerate(zip(files, vectors, captions, strict=True))
    ]
    client.upsert("photos", points)
    client.close()
    return f"qdrant+local://{path}/photos"


def lance_app(path, files, vectors) -> str:
    """An app's LanceDB table: text keys, its own vector column name, relative paths."""
    import lancedb
    import pyarrow as pa

    table = pa.table(
        {
            "key": [f"img-{n}" for n in range(len(files))],
            "emb": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1]),
            "file": [f.name for f in files],
            "album": ["2024" if n % 3 else "2023" for n in range(len(files))],
        }
    )
    lancedb.connect(str(path)).create_table("photos", data=table)
    return f"lancedb://{path}/photos"


def by_path(result) -> list[tuple]:
    return [
        (i.path.rsplit("/", 1)[-1], getattr(i, "verdict", None), round(i.score_after, 4))
        for i in result.items
    ]


def same_answers(attached: Engine, own: Engine, photos, where: str | None = None) -> None:
    query = str(photos / "000004.png")
    for kwargs in ({"text": "a blue square"}, {"text": "a red circle", "mode": "decrease"}):
        assert by_path(attached.counterfactuals(image=query, k=3, where=where, **kwargs)) == by_path(
            own.counterfactuals(image=query, k=3, where=where, **kwargs)
        )
    hits = attached.search(text="a green star", k=5, where=where)
    assert by_path(hits) == by_path(own.search(text="a green star", k=5, where=where)) and hits.items


def test_attach_a_qdrant_collection(app, tmp_path) -> None:
    base, model, files, vectors, captions = app
    uri = qdrant_app(tmp_path / "qdrant", files, vectors, captions)
    index_dir = tmp_path / "side"
    assert run(["attach", uri, "--model", str(model.spec), "--vector-field", "clip", "--path-field", "file",
                "--caption-field", "caption", "--index", str(index_dir), "--device", "cpu"]) == 0  # fmt: skip
    assert sorted(p.name for p in index_dir.iterdir()) == sorted([SIDE_NAME, SAMPLE_NAME])  # nothing copied
    side = read_side(index_dir)
    assert side.kind == "attached" and side.agreement["lowest"] > 0.999 and side.calibration is not None
    with Engine(open_index(index_dir), model) as attached, Engine(Index.open(base / "faiss"), model) as own:
        same_answers(attached, own, base / "photos")
        where = 'album = "2024"'
        result = attached.counterfactuals(image=str(files[4]), text="a blue square", k=5, where=where)
        assert result.items and all(int(i.path[-10:-4]) % 3 != 0 for i in result.items)  # album 2024
        assert attached.index.image_id_for_path(files[4]) is not None
    assert run(["check", str(index_dir)]) == 0


def test_attach_a_lancedb_table(app, tmp_path) -> None:
    base, model, files, vectors, _ = app
    uri = lance_app(tmp_path / "lance", files, vectors)
    from counterclip.index_builder.stores.attach import attach_collection

    done = attach_collection(uri, tmp_path / "side", model, vector_field="emb", path_field="file", id_field="key",
                             root=base / "photos")  # fmt: skip
    assert done["images"] == 30 and done["calibration"] is None
    with (
        Engine(open_index(tmp_path / "side"), model) as attached,
        Engine(Index.open(base / "faiss"), model) as own,
    ):
        same_answers(attached, own, base / "photos")


def test_a_collection_another_model_made_is_refused(app, tmp_path, capsys) -> None:
    _, model, files, vectors, captions = app
    other = np.random.default_rng(1).standard_normal(vectors.shape).astype(np.float32)
    uri = qdrant_app(tmp_path / "qdrant", files, other, captions)
    argv = ["attach", uri, "--model", str(model.spec), "--vector-field", "clip", "--path-field", "file",
            "--index", str(tmp_path / "side"), "--device", "cpu"]  # fmt: skip
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert "were not made by" in err and "lowest" in err and "median" in err and "Traceback" not in err
    assert not (tmp_path / "side").exists()
    narrow = qdrant_app(tmp_path / "narrow", files, vectors[:, :7], captions)
    assert run([*argv[:1], narrow, *argv[2:]]) == 2
    assert "width 7" in capsys.readouterr().err


def test_the_cli_over_a_store(app, tmp_path, capsys) -> None:
    base, model, _, _, _ = app
    index_dir, uri = tmp_path / "idx", f"lancedb://{tmp_path}/db/photos"
    argv = ["build", str(base / "photos"), "--index", str(index_dir), "--model", str(model.spec),
            "--device", "cpu", "--store", uri]  # fmt: skip
    assert run(argv) == 0
    assert "store      " + uri.replace("lancedb://", "lancedb://") in capsys.readouterr().out
    assert (
        run(
            [
                "search",
                str(index_dir),
                "--text",
                "a red circle",
                "-k",
                "3",
                "--paths",
                "--where",
                'path = "000007.png"',
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip().endswith("000007.png")
    assert run(["info", str(index_dir)]) == 0 and "exact" in capsys.readouterr().out
    assert run(["search", str(index_dir), "--text", "x", "--where", "album = "]) == 2
    assert "expected a value" in capsys.readouterr().err


def test_a_store_server_that_is_down_stops_the_build_first(app, tmp_path, capsys) -> None:
    base, model, _, _, _ = app
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["build", str(base / "photos"), "--index", str(tmp_path / "idx"), "--model", str(model.spec),
            "--store", f"qdrant://127.0.0.1:{port}/photos"]  # fmt: skip
    assert run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "did not answer" in err and "start the Qdrant server" in err
    assert not (tmp_path / "idx").exists()


def test_the_service_over_a_store(app, tmp_path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from counterclip.server.app import create_app

    base, model, files, vectors, captions = app
    uri = qdrant_app(tmp_path / "qdrant", files, vectors, captions)
    run(["attach", uri, "--model", str(model.spec), "--vector-field", "clip", "--path-field", "file",
         "--index", str(tmp_path / "side"), "--device", "cpu"])  # fmt: skip
    with Engine(open_index(tmp_path / "side"), model) as engine:
        with TestClient(create_app(engine), base_url="http://127.0.0.1:8000") as client:
            found = client.post("/search", json={"text": "a blue square", "k": 4, "where": 'album = "2023"'})
            assert found.status_code == 200, found.text
            items = found.json()["items"]
            assert items and all(int(i["path"][-8:-4]) % 3 == 0 for i in items)
            image = client.get(f"/images/{items[0]['id']}")
            assert image.status_code == 200 and image.content == open(items[0]["path"], "rb").read()
