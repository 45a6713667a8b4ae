"""The service carries the quality cards: ``quality: true`` on /counterfactual gives every answer its card
(the engine's, the client rebuilds it), on /maps every explained map its card; without it nothing more."""

from __future__ import annotations

from fastapi.testclient import TestClient
from server_kit import LOCAL, ThreadServer

from counterclip.client import Client
from counterclip.quality import QUALITIES
from counterclip.server.app import create_app


def test_quality_on_counterfactual_and_maps(shapes_engine) -> None:
    query = {"image": {"id": 3}, "text": "a red circle", "k": 2}
    with TestClient(create_app(shapes_engine), base_url=LOCAL) as client:
        plain = client.post("/counterfactual", json=query).json()
        assert "quality" not in plain
        graded = client.post("/counterfactual", json={**query, "quality": True}).json()
        local = shapes_engine.counterfactuals(image=3, text="a red circle", k=2, quality=True)
        assert graded["quality"]["answers"] == [card.to_dict() for card in local.quality.answers]
        item = graded["items"][0]["id"]
        maps = client.post("/maps", json={**query, "item": item, "quality": True}).json()["maps"]
        cards = {m["title"]: m.get("quality") for m in maps}
        assert cards["The original"] is None and cards["The answer"] is None
        explained = [title for title in cards if title not in ("The original", "The answer")]
        assert len(explained) == 2 and "Why it rather than the original" in explained  # the pair map's
        for title in explained:  # title says what it shows (issue 29): "Why it matches" only for a match
            assert set(QUALITIES) <= set(cards[title]) and cards[title]["forward_passes"] > 0
        unasked = client.post("/maps", json={**query, "item": item}).json()["maps"]
        assert all("quality" not in m for m in unasked)


def test_the_client_asks_for_and_rebuilds_the_cards(shapes_engine) -> None:
    with ThreadServer(create_app(shapes_engine)) as server:
        remote = Client(server.url).counterfactuals(image=3, text="a red circle", k=2, quality=True)
    local = shapes_engine.counterfactuals(image=3, text="a red circle", k=2, quality=True)
    assert [c.subject for c in remote.quality.answers] == [c.subject for c in local.quality.answers]
    assert remote.quality.summary.understandability == local.quality.summary.understandability
