"""Safe by default: files only by id, inside the root and unchanged; limits before decoding; 4xx JSON for
every malformed request; a token off loopback; a Host allow-list; CORS only when asked."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import shutil
import struct
import threading
import time
import zlib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from server_kit import LOCAL, ThreadServer, has_proc, rss_bytes

from counterclip.errors import InputError
from counterclip.index_builder.scan import scan_folder
from counterclip.server.app import create_app
from counterclip.server.settings import Limits, ServerSettings

SECRET = b"TOP-SECRET-BYTES-" * 20


def outside_copy(tmp_path: Path, name: str, like: Path) -> Path:
    """A file outside the indexed folder with the same bytes-count and mtime as an indexed one."""
    folder = tmp_path / "outside"
    folder.mkdir(exist_ok=True)
    target = folder / name
    target.write_bytes(SECRET[: like.stat().st_size].ljust(like.stat().st_size, b"!"))
    os.utime(target, ns=(like.stat().st_atime_ns, like.stat().st_mtime_ns))
    return target


# --- files by id only ----------------------------------------------------------------------------------
def test_path_traversal_never_leaks(client, tmp_path) -> None:
    (tmp_path / "secret.txt").write_bytes(SECRET)
    attempts = [
        "/images/..%2F..%2Fsecret.txt",
        "/images/../../secret.txt",
        "/images/%2e%2e/secret.txt",
        "/images/1%2F..%2F..%2Fsecret.txt",
        "/images/-1",
        "/images/1.5",
        "/images/0x1",
        "/static/..%2F..%2F..%2Fsecret.txt",
        "/static/../../secret.txt",
        "/static/swagger/..%2F..%2Fsecret.txt",
        "/images/" + str(2**63),
        "/images/" + str(2**64 + 1),
    ]
    for path in attempts:
        response = client.get(path)
        assert 400 <= response.status_code < 500, (path, response.status_code)
        assert SECRET[:16] not in response.content
        assert response.headers["content-type"].startswith("application/json"), path


def test_symlink_swaps_are_refused(client, colour_engine, tmp_path) -> None:
    root = colour_engine.index.root
    leaks = 0
    # 1. an indexed file replaced by a symlink to a file outside the root (same size and mtime)
    victim = root / "img001.png"
    target = outside_copy(tmp_path, "a.png", victim)
    victim.unlink()
    victim.symlink_to(target)
    # 2. an indexed file replaced by a symlink to /etc/passwd
    (root / "img002.png").unlink()
    (root / "img002.png").symlink_to("/etc/passwd")
    # 3. an indexed file swapped for another file of the root (different size)
    (root / "img003.png").unlink()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(root / "img003.png")
    for image_id in (1, 2, 3):
        response = client.get(f"/images/{image_id}")
        leaks += response.status_code == 200
        assert (
            response.status_code == 404
            and b"root:" not in response.content
            and SECRET[:16] not in response.content
        )
        assert client.get(f"/images/{image_id}/meta").status_code == 200  # the index still knows the id
    # the report and the maps read images through the same check
    assert client.post("/search", json={"image": {"id": 1}, "k": 1}).status_code == 200  # stored vector only
    assert leaks == 0
    assert client.get("/images/4").status_code == 200  # untouched files are still served


def test_a_symlinked_folder_out_of_the_root_is_refused(tmp_path) -> None:
    from server_kit import make_colour_engine

    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    engine = make_colour_engine(root)
    # move an image into a sub-folder the index knows, then make that folder a symlink to a copy outside
    engine.index.images._table[1] = ("sub/img001.png", engine.index.images._table[1][1])
    shutil.move(root / "img001.png", root / "sub/img001.png")
    engine.index.images.recorded[1]["mtime"] = (root / "sub/img001.png").stat().st_mtime_ns / 1e9
    with TestClient(create_app(engine), base_url=LOCAL) as client:
        assert client.get("/images/1").status_code == 200
        outside = tmp_path / "elsewhere"
        shutil.copytree(root / "sub", outside, copy_function=shutil.copy2)  # same bytes, size and mtime
        shutil.rmtree(root / "sub")
        (root / "sub").symlink_to(outside, target_is_directory=True)
        assert client.get("/images/1").status_code == 404


def test_scan_skips_symlinks_out_of_the_root(tmp_path) -> None:
    root = tmp_path / "photos"
    (root / "inner").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (4, 4)).save(outside / "far.png")
    Image.new("RGB", (4, 4)).save(root / "inner/near.png")
    (root / "to_far.png").symlink_to(outside / "far.png")
    (root / "to_near.png").symlink_to(root / "inner/near.png")
    (root / "far_dir").symlink_to(outside, target_is_directory=True)
    entries = {e.rel: e for e in scan_folder(root)}
    assert entries["inner/near.png"].error is None and entries["to_near.png"].error is None
    assert "outside the indexed folder" in entries["to_far.png"].error
    assert "outside the indexed folder" in entries["far_dir"].error
    assert "far_dir/far.png" not in entries  # never entered


# --- limits -------------------------------------------------------------------------------------------
def png_claiming(width: int, height: int) -> bytes:
    """A tiny 1-bit PNG whose header claims ``width x height`` (a decompression bomb)."""
    raw = zlib.compress(b"\x00" * (1 + (width + 7) // 8) * 8)  # a few rows; never decoded
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def real_bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bombs_and_oversized_uploads_are_4xx(client) -> None:
    bomb = real_bomb()
    assert len(bomb) < 40_000  # 144 megapixels in a few kB
    for data in (bomb, png_claiming(20_000, 20_000), png_claiming(60_000, 1)):
        response = client.post("/search", json={"image": {"base64": base64.b64encode(data).decode()}})
        assert response.status_code == 413 and "limit" in response.json()["detail"], response.text
    small = Limits(max_upload_bytes=1000, max_body_bytes=100_000)
    with TestClient(
        create_app(client.app.state.service.engine, ServerSettings(limits=small)), base_url=LOCAL
    ) as c:
        big = base64.b64encode(os.urandom(2000)).decode()
        response = c.post("/search", json={"image": {"base64": big}})
        assert response.status_code == 413 and "1000 bytes" in response.json()["detail"]


def test_text_and_body_limits(client) -> None:
    assert client.post("/search", json={"text": "r" * 1001}).status_code == 422
    assert "limit is 1000" in client.post("/search", json={"text": "r" * 1001}).json()["detail"]
    labels = [f"label {i}" for i in range(101)]
    flip = {"image": {"id": 0}, "mode": "flip", "labels": labels, "target": "label 1"}
    assert client.post("/counterfactual", json=flip).status_code == 422
    huge = b'{"text": "' + b"a" * 20_000_000 + b'"}'
    response = client.post("/search", content=huge, headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["detail"].startswith("request body larger")


MALFORMED = [
    ("POST", "/search", '{"text": "red", "k": NaN}'),
    ("POST", "/search", '{"text": "red", "k": Infinity}'),
    ("POST", "/search", '{"text": "red", "k": 1e400}'),
    ("POST", "/search", '{"text": "red", "k": 0}'),
    ("POST", "/search", '{"text": "red", "k": 1000000}'),
    ("POST", "/search", '{"text": "red", "k": true}'),
    ("POST", "/search", '{"text": "red", "k": "3"}'),
    ("POST", "/search", '{"text": "\\ud800"}'),
    ("POST", "/search", '{"text": "red", "nprobe": 3}'),
    ("POST", "/search", '{"text": "red", "target": "files"}'),
    ("POST", "/search", '{"image": {"id": 9223372036854775808}}'),
    ("POST", "/search", '{"image": {"id": 99999999999999999999999}}'),
    ("POST", "/search", '{"image": {"id": -1}}'),
    ("POST", "/search", '{"image": {"id": 1.5}}'),
    ("POST", "/search", '{"image": {"id": 77}}'),
    ("POST", "/search", '{"image": {"id": 1, "base64": "AAAA"}}'),
    ("POST", "/search", '{"image": {}}'),
    ("POST", "/search", '{"image": {"base64": "%%%"}}'),
    ("POST", "/search", '{"image": {"base64": "JVBERi0xLjQK"}}'),
    ("POST", "/search", "{}"),
    ("POST", "/search", '{"text": "red"'),
    ("POST", "/search", "[1, 2]"),
    ("POST", "/search", ""),
    ("POST", "/counterfactual", '{"image": {"id": 0}, "text": "red", "threshold": NaN}'),
    ("POST", "/counterfactual", '{"image": {"id": 0}, "text": "red", "threshold": -Infinity}'),
    ("POST", "/counterfactual", '{"image": {"id": 0}, "text": "red", "threshold": 1e300}'),
    ("POST", "/counterfactual", '{"image": {"id": 0}, "text": "red", "match_margin": NaN}'),
    ("POST", "/counterfactual", '{"image": {"id": 0}, "text": "red", "match_margin": -0.1}'),
    ("POST", "/counterfactual", '{"image": {"id": 0}, "text": "red", "nomatch_margin": 7}'),
    ("POST", "/counterfactual", '{"image": {"id": 0}, "text": "red", "k": 0}'),
    ("POST", "/counterfactual", '{"image": {"id": 0}, "text": "red", "side": "both"}'),
    ("POST", "/counterfactual", '{"image": {"id": 0}, "text": "red", "mode": "invert"}'),
    ("POST", "/counterfactual", '{"image": {"id": 0}, "text": "\\udfff"}'),
    ("POST", "/counterfactual", '{"image": {"id": 0}, "mode": "flip", "labels": ["red"], "target": "red"}'),
    (
        "POST",
        "/counterfactual",
        '{"image": {"id": 0}, "mode": "flip", "labels": "red,blue", "target": "red"}',
    ),
    (
        "POST",
        "/counterfactual",
        '{"image": {"id": 0}, "mode": "flip", "labels": ["red", "blue"], "target": "green"}',
    ),
    ("POST", "/counterfactual", '{"image": {"id": 0}, "text": "red", "side": "text"}'),
    ("POST", "/counterfactual", '{"image": {"id": 18446744073709551616}, "text": "red"}'),
    ("POST", "/maps", '{"image": {"id": 0}, "text": "red", "item": -5}'),
    ("POST", "/report", '{"image": {"id": 0}, "text": "red", "maps": "yes please"}'),
    ("GET", "/images/abc", None),
    ("GET", "/images/9223372036854775808", None),
    ("GET", "/images/99", None),
    ("GET", "/images/1/meta/extra", None),
    ("GET", "/no/such/route", None),
    ("DELETE", "/images/1", None),
]


def test_malformed_requests_are_4xx_json_on_one_connection(colour_engine) -> None:
    """Every hostile request gets a 4xx JSON answer, and the same keep-alive connection goes on working."""
    with ThreadServer(create_app(colour_engine, ServerSettings(workers=2))) as server:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        statuses = []
        for method, path, body in MALFORMED:
            headers = {"content-type": "application/json"} if body is not None else {}
            connection.request(method, path, body=None if body is None else body.encode(), headers=headers)
            response = connection.getresponse()
            payload = response.read()
            statuses.append(response.status)
            assert 400 <= response.status < 500, (method, path, body, response.status, payload[:200])
            assert response.getheader("content-type", "").startswith("application/json"), path
            assert isinstance(json.loads(payload)["detail"], str), path
            connection.request("GET", "/health")  # the connection is still usable
            check = connection.getresponse()
            assert check.status == 200 and json.loads(check.read())["status"] == "ok"
        connection.close()
    assert sum(s >= 500 for s in statuses) == 0 and len(statuses) == len(MALFORMED)


def test_a_500_is_json_and_drops_nothing(colour_engine) -> None:
    expected = [i.id for i in colour_engine.search(text="red", k=2).items]
    with ThreadServer(create_app(colour_engine, ServerSettings(workers=2))) as server:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        for _ in range(3):
            connection.request(
                "POST", "/search", body=b'{"text": "boom"}', headers={"content-type": "application/json"}
            )
            response = connection.getresponse()
            body = json.loads(response.read())
            assert response.status == 500 and "RuntimeError" in body["detail"]
            connection.request(
                "POST",
                "/search",
                body=b'{"text": "red", "k": 2}',
                headers={"content-type": "application/json"},
            )
            response = connection.getresponse()
            assert (
                response.status == 200 and [i["id"] for i in json.loads(response.read())["items"]] == expected
            )
        connection.close()


@pytest.mark.skipif(not has_proc(), reason="reads /proc for the resident memory")
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_concurrent_bombs_keep_memory_bounded(colour_engine) -> None:
    bomb = json.dumps({"image": {"base64": base64.b64encode(real_bomb()).decode()}}).encode()
    with ThreadServer(create_app(colour_engine, ServerSettings(workers=2, queue=16))) as server:
        before = rss_bytes()
        peak = [before]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss_bytes())
                time.sleep(0.005)

        def upload(statuses: list[int]) -> None:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            for _ in range(3):
                connection.request("POST", "/search", body=bomb, headers={"content-type": "application/json"})
                response = connection.getresponse()
                response.read()
                statuses.append(response.status)
            connection.close()

        sampler = threading.Thread(target=sample)
        sampler.start()
        statuses: list[int] = []
        threads = [threading.Thread(target=upload, args=(statuses,)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done.set()
        sampler.join()
    assert statuses == [413] * 18
    # decoding one of these would take 144 MB (1 byte a pixel), six at once close to 1 GB
    assert peak[0] - before < 100 * 1024 * 1024, f"RSS grew {(peak[0] - before) / 2**20:.0f} MB"


# --- who may call -------------------------------------------------------------------------------------
def test_no_token_off_loopback_is_refused_at_start() -> None:
    with pytest.raises(InputError, match="--token"):
        ServerSettings(host="0.0.0.0")
    with pytest.raises(InputError, match="--token"):
        ServerSettings(host="192.168.1.20")
    with pytest.raises(InputError, match="at least 8"):
        ServerSettings(host="0.0.0.0", token="short")
    ServerSettings(host="::1")  # loopback: no token needed


def test_token_required_when_bound_off_loopback(colour_engine) -> None:
    settings = ServerSettings(host="0.0.0.0", token="s3cret-token", allowed_hosts=("gpu-box.lan",))
    with TestClient(create_app(colour_engine, settings), base_url="http://gpu-box.lan:8000") as client:
        for method, path, body in (
            ("POST", "/search", {"text": "red"}),
            ("POST", "/counterfactual", {"image": {"id": 0}, "text": "red"}),
            ("GET", "/images/1", None),
            ("GET", "/images/1/meta", None),
            ("GET", "/health", None),
            ("GET", "/info", None),
        ):
            response = client.request(method, path, json=body)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"].startswith("Bearer")
            wrong = client.request(method, path, json=body, headers={"authorization": "Bearer nope-nope"})
            assert wrong.status_code == 401, path
            right = client.request(method, path, json=body, headers={"authorization": "Bearer s3cret-token"})
            assert right.status_code == 200, path
        # the page and its assets hold no index data: public, so a browser can ask for the token
        for path in ("/", "/static/js/main.js", "/docs", "/openapi.json"):
            assert client.get(path).status_code == 200, path
        assert (
            client.get("/openapi.json").json()["components"]["securitySchemes"]["bearer"]["scheme"]
            == "bearer"
        )
        # the page trades the token for a same-site, http-only cookie so <img> requests carry it
        assert (
            client.post("/auth/session", headers={"authorization": "Bearer wrong-token"}).status_code == 401
        )
        session = client.post("/auth/session", headers={"authorization": "Bearer s3cret-token"})
        assert session.status_code == 204
        cookie = session.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert client.get("/images/1").status_code == 200  # the TestClient keeps the cookie


def test_host_header_allow_list(colour_engine) -> None:
    app = create_app(colour_engine, ServerSettings())
    with TestClient(app, base_url=LOCAL) as client:
        for host in ("127.0.0.1:8000", "localhost:8000", "localhost", "[::1]:8000"):
            assert client.get("/health", headers={"host": host}).status_code == 200, host
        for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", ""):
            response = client.get("/health", headers={"host": host})
            assert response.status_code == 400 and "allowed-host" in response.json()["detail"], host
    with TestClient(
        create_app(colour_engine, ServerSettings(allowed_hosts=("shapes.lan",))), base_url=LOCAL
    ) as c:
        assert c.get("/health", headers={"host": "SHAPES.lan:9000"}).status_code == 200
    with TestClient(create_app(colour_engine, ServerSettings(allowed_hosts=("*",))), base_url=LOCAL) as c:
        assert c.get("/health", headers={"host": "anything.example"}).status_code == 200


def test_cors_is_off_unless_asked(colour_engine) -> None:
    origin = {"origin": "http://app.example"}
    with TestClient(create_app(colour_engine, ServerSettings()), base_url=LOCAL) as client:
        response = client.post("/search", json={"text": "red"}, headers=origin)
        assert response.status_code == 200 and "access-control-allow-origin" not in response.headers
        preflight = client.options("/search", headers={**origin, "access-control-request-method": "POST"})
        assert "access-control-allow-origin" not in preflight.headers
    settings = ServerSettings(cors_origins=("http://app.example",))
    with TestClient(create_app(colour_engine, settings), base_url=LOCAL) as client:
        response = client.post("/search", json={"text": "red"}, headers=origin)
        assert response.headers["access-control-allow-origin"] == "http://app.example"
        other = client.post("/search", json={"text": "red"}, headers={"origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        preflight = client.options(
            "/search",
            headers={
                **origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization",
            },
        )
        assert (
            preflight.status_code == 200
            and "authorization" in preflight.headers["access-control-allow-headers"].lower()
        )


def test_serve_refuses_a_network_address_without_a_token(tmp_path, capsys, monkeypatch) -> None:
    from counterclip.cli import run

    monkeypatch.delenv("COUNTERCLIP_TOKEN", raising=False)
    assert run(["serve", str(tmp_path), "--host", "0.0.0.0"]) == 2
    out = capsys.readouterr()
    assert "--token" in out.out + out.err and "exposes the API" in out.out + out.err


def test_a_chunked_body_is_cut_at_the_limit(colour_engine) -> None:
    settings = ServerSettings(limits=Limits(max_body_bytes=64 * 1024, max_upload_bytes=32 * 1024))
    sent = [0]

    def chunks():
        for _ in range(200):  # 200 x 16 kB = 3.2 MB offered, no Content-Length
            sent[0] += 1
            yield b'{"text": "' + b"a" * 16_000 if sent[0] == 1 else b"a" * 16_384

    with ThreadServer(create_app(colour_engine, settings)) as server:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            connection.request(
                "POST",
                "/search",
                body=chunks(),
                headers={"content-type": "application/json"},
                encode_chunked=True,
            )
            response = connection.getresponse()
            status, body = response.status, json.loads(response.read())
        except (BrokenPipeError, ConnectionResetError):  # the server may close before all is sent
            status, body = 413, {"detail": "request body larger than the limit (connection closed)"}
        finally:
            connection.close()
    assert status == 413 and "larger than the limit" in body["detail"]
