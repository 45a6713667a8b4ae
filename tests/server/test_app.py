"""The HTTP service answers what the engine answers, and turns bad input into 422s."""

from __future__ import annotations

import base64
import io

import pytest
from doubles import ColourModel, colour_vector, make_colour_index
from PIL import Image

from counterclip.engine import Engine, EngineOptions  # noqa: E402

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from counterclip.server.app import create_app  # noqa: E402


@pytest.fixture()
def client_engine(tmp_path):
    texts = {"red": colour_vector((255, 0, 0)), "blue": colour_vector((0, 0, 255))}
    colours = {0: (90, 90, 200), 1: (200, 60, 60), 2: (250, 20, 20), 3: (100, 100, 220), 4: (20, 200, 20)}
    engine = Engine(
        make_colour_index(tmp_path, colours), ColourModel(texts), EngineOptions(k=3, diversity=0.0)
    )
    return TestClient(create_app(engine)), engine


def test_counterfactual_matches_engine(client_engine) -> None:
    client, engine = client_engine
    response = client.post("/counterfactual", json={"image": {"id": 0}, "text": "red", "threshold": 5.0})
    assert response.status_code == 200
    direct = engine.counterfactuals(image=0, text="red", threshold=5.0)
    assert [i["id"] for i in response.json()["items"]] == [i.id for i in direct.items] == [1, 2]
    assert response.json()["validity"]["threshold"] == 5.0


def test_counterfactual_takes_the_decrease_margin(client_engine) -> None:
    client, engine = client_engine
    body = {"image": {"id": 0}, "text": "red", "mode": "decrease", "nomatch_margin": 0.6}
    response = client.post("/counterfactual", json=body)
    assert response.status_code == 200
    direct = engine.counterfactuals(image=0, text="red", mode="decrease", nomatch_margin=0.6)
    assert response.json()["validity"]["threshold"] == pytest.approx(direct.validity.threshold)
    default = engine.counterfactuals(image=0, text="red", mode="decrease")
    assert direct.validity.threshold != pytest.approx(default.validity.threshold)
    assert [i["id"] for i in response.json()["items"]] == [i.id for i in direct.items]


def test_search_with_uploaded_image(client_engine) -> None:
    client, engine = client_engine
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (250, 20, 20)).save(buffer, format="PNG")
    body = {"image": {"base64": base64.b64encode(buffer.getvalue()).decode()}, "k": 2}
    response = client.post("/search", json=body)
    assert response.status_code == 200 and [i["id"] for i in response.json()["items"]] == [2, 1]
    assert client.get("/images/2").content == (engine.index.root / "img002.png").read_bytes()


def test_bad_requests(client_engine) -> None:
    client, _ = client_engine
    assert client.post("/counterfactual", json={"image": {"id": 0}, "text": ""}).status_code == 422
    assert (
        client.post(
            "/counterfactual", json={"image": {"base64": "bm90IGFuIGltYWdl"}, "text": "red"}
        ).status_code
        == 422
    )
    assert (
        client.post("/search", json={"text": "red", "nprobe": 3}).status_code == 422
    )  # unknown keys are errors
    assert client.get("/images/99").status_code == 404
    assert client.get("/health").json()["images"] == 5
