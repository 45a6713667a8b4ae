"""The HTTP service answers what the engine answers, describes what the page shows, serves the page and
the API docs from the package, and turns bad input into 4xx JSON errors."""

from __future__ import annotations

import base64
import io
import re

import pytest
from PIL import Image
from server_kit import COLOURS

from counterclip.server.routes import STATIC


def png_b64(rgb: tuple[int, int, int], size: int = 8) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_counterfactual_matches_engine(client, colour_engine) -> None:
    response = client.post("/counterfactual", json={"image": {"id": 0}, "text": "red", "threshold": 5.0})
    assert response.status_code == 200
    direct = colour_engine.counterfactuals(image=0, text="red", threshold=5.0)
    assert [i["id"] for i in response.json()["items"]] == [i.id for i in direct.items] == [1, 2]
    assert response.json()["validity"]["threshold"] == 5.0
    # every image the page shows is described: the query and each item, by file name
    images = response.json()["images"]
    assert {int(k) for k in images} >= {0, 1, 2}
    assert images["1"]["name"] == "img001.png" and images["0"]["path"] == "img000.png"


def test_counterfactual_takes_the_decrease_margin(client, colour_engine) -> None:
    body = {"image": {"id": 0}, "text": "red", "mode": "decrease", "nomatch_margin": 0.6}
    response = client.post("/counterfactual", json=body)
    assert response.status_code == 200
    direct = colour_engine.counterfactuals(image=0, text="red", mode="decrease", nomatch_margin=0.6)
    assert response.json()["validity"]["threshold"] == pytest.approx(direct.validity.threshold)
    default = colour_engine.counterfactuals(image=0, text="red", mode="decrease")
    assert direct.validity.threshold != pytest.approx(default.validity.threshold)
    assert [i["id"] for i in response.json()["items"]] == [i.id for i in direct.items]


def test_search_with_uploaded_image(client, colour_engine) -> None:
    body = {"image": {"base64": png_b64((250, 20, 20), size=16)}, "k": 2}
    response = client.post("/search", json=body)
    # an upload that is not an indexed file: nothing excluded, nearest colours first
    assert response.status_code == 200 and [i["id"] for i in response.json()["items"]] == [2, 1]
    assert client.get("/images/2").content == (colour_engine.index.root / "img002.png").read_bytes()


def test_an_uploaded_indexed_file_is_that_image(client, colour_engine) -> None:
    data = (colour_engine.index.root / "img002.png").read_bytes()
    as_data_url = "data:image/png;base64," + base64.b64encode(data).decode()
    response = client.post("/search", json={"image": {"base64": as_data_url}, "k": 2})
    assert response.status_code == 200
    assert response.json()["query"] == {"id": 2, "path": "img002.png"}
    # like Engine.search(image=2): the image itself is not its own answer
    assert [i["id"] for i in response.json()["items"]] == [
        i.id for i in colour_engine.search(image=2, k=2).items
    ]
    assert 2 not in [i["id"] for i in response.json()["items"]]


def test_info_health_and_meta(client, colour_engine) -> None:
    info = client.get("/info").json()
    assert info["images"] == len(COLOURS) and info["captions"] == 0
    assert info["maps"] is False and info["token_required"] is False  # the colour model has no ViT tower
    assert info["limits"]["max_text_chars"] == 1000
    health = client.get("/health").json()
    assert health["images"] == 5 and health["pool"]["workers"] == 2 and health["pool"]["in_flight"] == 0
    meta = client.get("/images/3/meta").json()
    assert meta == {
        "id": 3,
        "path": "img003.png",
        "name": "img003.png",
        "width": 8,
        "height": 8,
        "captions": [],
        "has_file": True,
        "url": None,
    }


def test_maps_need_a_model_with_towers(client) -> None:
    response = client.post("/maps", json={"image": {"id": 0}, "text": "red", "item": 1})
    assert response.status_code == 422 and "explanation maps need" in response.json()["detail"]


def test_image_etag_round_trip(client, colour_engine) -> None:
    first = client.get("/images/1")
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    assert first.headers["etag"].strip('"') == colour_engine.index.images.recorded[1]["sha256"][:32]
    again = client.get("/images/1", headers={"if-none-match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_bad_requests(client) -> None:
    assert client.post("/counterfactual", json={"image": {"id": 0}, "text": ""}).status_code == 422
    bad_image = client.post("/counterfactual", json={"image": {"base64": "bm90IGFuIGltYWdl"}, "text": "red"})
    assert bad_image.status_code == 422 and "not a usable image" in bad_image.json()["detail"]
    unknown_key = client.post("/search", json={"text": "red", "nprobe": 3})
    assert unknown_key.status_code == 422 and unknown_key.json()["detail"].startswith("nprobe:")
    assert client.get("/images/99").status_code == 404
    assert client.post("/search", json={"image": {"id": 99}}).status_code == 404
    assert client.get("/health").json()["images"] == 5


def test_page_is_served_from_the_package_with_a_strict_policy(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    # every asset the page and its modules reference is in the package and served
    assets = re.findall(r'(?:src|href)="(static/[^"]+)"', page.text)
    modules = {p.name for p in (STATIC / "js").glob("*.js")}
    for js in (STATIC / "js").glob("*.js"):
        for name in re.findall(r'from "\./([\w.]+)"', js.read_text()):
            assert name in modules, f"{js.name} imports missing {name}"
    assert {"static/app.css", "static/js/main.js", "static/favicon.svg"} <= set(assets)
    for asset in assets + [f"static/js/{m}" for m in modules]:
        assert client.get("/" + asset).status_code == 200, asset
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN


def test_docs_work_offline(client) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']|url:\s*['"]([^'"]+)['"]""", docs.text)
    referenced = [a or b for a, b in urls]
    assert referenced and all(not u.startswith(("http://", "https://", "//")) for u in referenced), referenced
    for url in referenced:
        assert client.get("/" + url.lstrip("/")).status_code == 200, url
    schema = client.get("/openapi.json").json()
    assert {"/search", "/counterfactual", "/maps", "/report", "/images/{image_id}"} <= set(schema["paths"])
    # the documented error body is the one the service sends
    error = schema["paths"]["/search"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]
    assert error["$ref"].endswith("/ErrorBody")
