"""Ids in paths are digits only, query text holds no control characters (422 over HTTP, `InputError` in
process), and the login cookie is an HMAC of the token, never the token."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from fastapi.testclient import TestClient

from counterclip.errors import InputError
from counterclip.server.app import create_app
from counterclip.server.security import TOKEN_COOKIE, session_cookie
from counterclip.server.settings import ServerSettings


@pytest.mark.parametrize(
    "path", ["/images/1.0", "/images/%201", "/images/1%20", "/images/+1", "/images/1e0", "/images/0x1"]
)
def test_only_digits_name_an_image(client, path: str) -> None:
    assert client.get("/images/1").status_code == 200
    response = client.get(path)
    assert response.status_code == 404 and response.headers["content-type"] == "application/json"
    assert client.get(path + "/meta").status_code == 404


def test_the_api_docs_keep_the_plain_path(client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/images/{image_id}" in paths and "/images/{image_id}/meta" in paths
    assert paths["/images/{image_id}"]["get"]["parameters"][0]["schema"]["type"] == "integer"


@pytest.mark.parametrize(
    ("body", "field", "where"),
    [
        ({"text": "red\x00car"}, "text", "U+0000 at position 3"),
        ({"text": "\x1b[31mred"}, "text", "U+001B at position 0"),
        ({"text": "red\x7f"}, "text", "U+007F at position 3"),
    ],
)
def test_control_characters_in_query_text_are_422(client, body, field, where) -> None:
    response = client.post("/search", json=body)
    assert response.status_code == 422
    assert response.json()["detail"] == f"{field}: Value error, text holds a control character ({where})"


def test_control_characters_in_labels_are_422_and_whitespace_is_text(client) -> None:
    flip = {"image": {"id": 0}, "mode": "flip", "labels": ["red", "bl\x07ue"], "target": "red"}
    response = client.post("/counterfactual", json=flip)
    assert response.status_code == 422 and response.json()["detail"].startswith("labels.1: Value error")
    assert "U+0007 at position 2" in response.json()["detail"]
    assert client.post("/search", json={"text": "\tred\r\n"}).status_code == 200


def test_control_characters_are_an_input_error_in_process(colour_engine) -> None:
    with pytest.raises(InputError, match=r"^text holds a control character \(U\+0000 at position 3\)"):
        colour_engine.search(text="red\x00")
    with pytest.raises(InputError, match=r"^labels\[1\] holds a control character \(U\+0085 at position 0\)"):
        colour_engine.counterfactuals(image=0, mode="flip", labels=["red", "\x85blue"], target="red")
    with pytest.raises(InputError, match=r"^target holds a control character"):
        colour_engine.counterfactuals(image=0, mode="flip", labels=["red", "blue"], target="red\x01")
    with pytest.raises(InputError, match=r"^text holds a control character"):
        colour_engine.counterfactuals(image=0, text="r\x02ed")


def test_the_login_cookie_is_an_hmac_of_the_token(colour_engine) -> None:
    token = "s3cret-token"
    settings = ServerSettings(token=token)
    with TestClient(create_app(colour_engine, settings), base_url="http://127.0.0.1:8000") as client:
        session = client.post("/auth/session", headers={"authorization": f"Bearer {token}"})
        assert session.status_code == 204
        value = session.cookies[TOKEN_COOKIE]
        expected = hmac.new(token.encode(), b"counterclip session cookie v1", hashlib.sha256).hexdigest()
        assert value == session_cookie(token) == expected and token not in session.headers["set-cookie"]
        assert client.get("/images/1").status_code == 200  # the cookie it set works
        client.cookies.clear()
        assert client.get("/images/1", cookies={TOKEN_COOKIE: token}).status_code == 401  # not the token
        assert client.get("/images/1", cookies={TOKEN_COOKIE: value}).status_code == 200
        client.cookies.clear()
        bearer_cookie = client.get("/images/1", headers={"authorization": f"Bearer {value}"})
        assert bearer_cookie.status_code == 401  # the cookie's value is no bearer token
