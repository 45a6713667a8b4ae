"""With the bundled model on a real index: `counterclip.Client` returns what `Engine` returns, the maps
of an answer are the explainers' maps, and the report is self-contained and built from checked files."""

from __future__ import annotations

import base64
import io
import os
import re

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from server_kit import LOCAL, ThreadServer

import counterclip
from counterclip.client import Client, ServerError
from counterclip.engine import CounterfactualResult, SearchResult
from counterclip.errors import InputError
from counterclip.explainers import image_counterfactual_maps, text_counterfactual_maps
from counterclip.server.app import create_app
from counterclip.server.settings import ServerSettings


def same_items(remote, local, tol: float = 1e-4) -> None:
    assert [i.id for i in remote.items] == [i.id for i in local.items]
    assert [i.path for i in remote.items] == [i.path for i in local.items]
    assert [i.text for i in remote.items] == [i.text for i in local.items]
    np.testing.assert_allclose(
        [i.score_after for i in remote.items], [i.score_after for i in local.items], atol=tol
    )
    assert [i.verified for i in remote.items] == [i.verified for i in local.items]


def test_client_is_an_engine_stand_in(shapes_server, shapes_engine, shapes_index) -> None:
    assert counterclip.Client is Client
    remote = Client(shapes_server.url)
    hits = remote.search(text="a red circle", k=5)
    assert isinstance(hits, SearchResult)
    same_items(hits, shapes_engine.search(text="a red circle", k=5))
    same_items(remote.search(image=3, k=4), shapes_engine.search(image=3, k=4))
    same_items(
        remote.search(text="a red circle", k=3, collection="captions"),
        shapes_engine.search(text="a red circle", k=3, collection="captions"),
    )
    # a path is uploaded; an indexed file is recognised as that image, as Engine does with its path
    root = shapes_engine.index.root
    path = root / shapes_engine.index.images.meta([3])[0]["path"]
    same_items(remote.search(image=path, k=4), shapes_engine.search(image=path, k=4))

    for kwargs in (
        {"image": 3, "text": "a red circle", "k": 3},
        {"image": 3, "text": "a red circle", "mode": "decrease", "k": 2, "nomatch_margin": 0.3},
        {
            "image": 3,
            "mode": "flip",
            "labels": ["a red circle", "a blue square"],
            "target": "a red circle",
            "k": 2,
        },
        {"image": 3, "text": "a red circle", "side": "text", "k": 3},
        {"image": Image.open(path), "text": "a green triangle", "k": 2},
    ):
        local = shapes_engine.counterfactuals(**kwargs)
        result = remote.counterfactuals(**kwargs)
        assert isinstance(result, CounterfactualResult)
        same_items(result, local, tol=1e-3)
        assert result.mode == local.mode and result.side == local.side
        if not isinstance(kwargs["image"], Image.Image):
            assert result.validity.rule == local.validity.rule
        else:  # a PIL image travels as a file and is decoded by the index's rules (this one halves 128 px)
            assert result.validity.original == pytest.approx(local.validity.original, abs=0.5)
        assert set(result.baselines) == set(local.baselines)
    assert remote.health()["images"] == 24
    assert remote.image_bytes(3) == path.read_bytes()


def test_client_errors_name_the_problem(shapes_server, shapes_engine) -> None:
    remote = Client(shapes_server.url)
    with pytest.raises(InputError, match="not in the index|no such image"):
        remote.counterfactuals(image=10_000, text="a red circle")
    with pytest.raises(InputError, match="text is required"):
        remote.counterfactuals(image=3)
    with pytest.raises(InputError, match="only match_margin"):
        remote.counterfactuals(image=3, text="x", diversity=0.5)
    with pytest.raises(InputError, match="exactly one"):
        remote.search()
    with pytest.raises(ServerError, match="cannot reach"):
        Client("http://127.0.0.1:9", timeout=5).search(text="a red circle")
    secured = create_app(shapes_engine, ServerSettings(token="0123456789abcdef"))
    with ThreadServer(secured) as server:
        with pytest.raises(InputError, match="needs a token"):
            Client(server.url, token=None).search(text="a red circle")
        assert len(Client(server.url, token="0123456789abcdef").search(text="a red circle", k=2).items) == 2


def decode(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")


def test_maps_are_the_explainers_maps(shapes_engine) -> None:
    from counterclip.report import overlay
    from counterclip.server.files import load_indexed

    with TestClient(create_app(shapes_engine), base_url=LOCAL) as client:
        query = {"image": {"id": 3}, "text": "a red circle", "k": 2}
        result = client.post("/counterfactual", json=query).json()
        item = result["items"][0]["id"]
        answer = client.post("/maps", json={**query, "item": item})
        assert answer.status_code == 200
        maps = answer.json()["maps"]
        # the pair map says "why it matches" only for a match (this small index holds no red circle)
        matches = result["items"][0]["p_match"] >= 0.5
        pair_title = "Why it matches" if matches else "What in it counts toward the text (not a match)"
        titles = ["The original", "The answer", pair_title, "Why it rather than the original"]
        assert [m["title"] for m in maps] == titles
        original = load_indexed(shapes_engine.index, 3, full_resolution=True)
        image = load_indexed(shapes_engine.index, item, full_resolution=True)
        assert np.array_equal(np.asarray(decode(maps[0]["png"])), np.asarray(original))
        assert np.array_equal(np.asarray(decode(maps[1]["png"])), np.asarray(image))
        pair, margin = image_counterfactual_maps(shapes_engine.model, original, image, "a red circle")
        for shown, explanation in ((maps[2], pair), (maps[3], margin)):
            expected = np.asarray(overlay(image, explanation.pixel_map), dtype=np.int16)
            got = np.asarray(decode(shown["png"]), dtype=np.int16)
            assert got.shape == expected.shape == (image.height, image.width, 3)
            assert np.abs(got - expected).max() <= 2  # the same map (float noise at most)
            legend = shown["legend"]
            assert legend["min"] == pytest.approx(float(explanation.pixel_map.min()), rel=1e-4, abs=1e-6)
            assert legend["high"] == pytest.approx(float(explanation.pixel_map.max()), rel=1e-4, abs=1e-6)
        found = client.post("/search", json={"text": "a red square", "collection": "captions", "k": 1}).json()
        caption = found["items"][0]
        text_side = client.post(
            "/maps", json={"image": {"id": 3}, "text": "a red circle", "side": "text", "item": caption["id"]}
        )
        assert text_side.status_code == 200
        kinds = [m["kind"] for m in text_side.json()["maps"]]
        assert kinds == ["image", "image", "tokens", "image"]
        words = text_side.json()["maps"][2]
        pair, _ = text_counterfactual_maps(shapes_engine.model, original, "a red circle", caption["text"])
        assert [t["text"] for t in words["tokens"]] == list(pair.tokens)
        np.testing.assert_allclose(
            [t["value"] for t in words["tokens"]], pair.token_map, rtol=1e-4, atol=1e-6
        )


def test_report_is_self_contained_and_built_from_checked_files(shapes_engine) -> None:
    with TestClient(create_app(shapes_engine), base_url=LOCAL) as client:
        query = {"image": {"id": 3}, "text": "a red circle", "k": 2}
        result = client.post("/counterfactual", json=query).json()
        report = client.post("/report", json={**query, "maps": False})
        assert report.status_code == 200
        assert (
            report.headers["content-disposition"] == 'attachment; filename="counterclip-image-increase.html"'
        )
        html = report.text
        for item in result["items"]:
            assert item["path"] in html
        assert not re.search(r"""(src|href)=["']https?://""", html)
        thumbs = re.findall(r'<img src="(data:image/png;base64,[^"]+)" alt="([^"]+)"', html)
        by_path = dict((alt, uri) for uri, alt in thumbs)
        first = result["items"][0]["path"]
        assert decode(by_path[first]).size[0] > 0
        # an answer whose file is swapped for a link out of the folder is shown as missing, never read
        root = shapes_engine.index.root
        victim = root / first
        keep, st = victim.read_bytes(), victim.stat()
        try:
            victim.unlink()
            victim.symlink_to("/etc/hostname")
            again = client.post("/report", json={**query, "maps": False}).text
            assert f'alt="{first}"' not in again
        finally:
            victim.unlink()
            victim.write_bytes(keep)
            os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
