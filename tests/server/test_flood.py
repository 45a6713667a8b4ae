"""A flood against a real `counterclip serve` on 127.0.0.1 (bounded: 48 clients, one burst, seconds):
the refused get 503 + Retry-After at once, the memory the requests reserve never passes the budget, and
the server's RSS (read from /proc) stays within the budget over idle and comes back after."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from server_kit import free_port, has_proc, rss_bytes

pytestmark = pytest.mark.skipif(not has_proc(), reason="reads the server's RSS from /proc")

CLIENTS = 48
BODY_MB = 8
BUDGET_MB = 256
PIECE = 256 * 1024


async def post(port: int, path: str, body: bytes) -> dict:
    """POST ``body`` in pieces while reading the answer: status, Retry-After, seconds to the status line."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"

    async def send() -> None:
        try:
            writer.write(head.encode())
            view = memoryview(body)
            for start in range(0, len(view), PIECE):
                writer.write(view[start : start + PIECE])
                await writer.drain()
        except OSError:
            pass

    sender = asyncio.ensure_future(send())
    try:
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        seconds = time.perf_counter() - started
        lines = answer.decode("latin-1").strip().split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        detail = json.loads(await reader.readexactly(int(headers["content-length"]))).get("detail")
        return {
            "status": int(lines[0].split()[1]),
            "retry": headers.get("retry-after"),
            "s": seconds,
            "detail": detail,
        }
    finally:
        sender.cancel()
        writer.close()


def get_json(port: int, path: str) -> dict:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return json.loads(data.split(b"\r\n\r\n", 1)[1])


@pytest.fixture()
def served(shapes_index: Path, tmp_path: Path):
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")
    command = [sys.executable, "-m", "counterclip", "serve", str(shapes_index), "--port", str(port)]
    command += ["--device", "cpu", "--workers", "2", "--memory-budget-mb", str(BUDGET_MB)]
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                get_json(port, "/health")
                break
            except (OSError, IndexError, ValueError):
                assert server.poll() is None and time.monotonic() < deadline, (
                    tmp_path / "serve.log"
                ).read_text()
                time.sleep(0.2)
        yield server, port
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_a_flood_of_large_bodies_is_refused_fast_within_the_budget(served) -> None:
    server, port = served
    asyncio.run(post(port, "/search", b'{"text": "a red circle"}'))  # warm: the idle server has answered
    time.sleep(0.5)
    idle = rss_bytes(server.pid)
    peak = [idle]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes(server.pid))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    body = b'{"text": "' + b"a" * (BODY_MB * 1_000_000) + b'"}'

    async def flood() -> list[dict]:
        return await asyncio.gather(*(post(port, "/search", body) for _ in range(CLIENTS)))

    try:
        answers = asyncio.run(asyncio.wait_for(flood(), 120))
    finally:
        stop.set()
        sampler.join()
    statuses = sorted({a["status"] for a in answers})
    busy = [a for a in answers if a["status"] == 503]
    # admitted: each reserves 256 kB + 5 x 8 MB; 256 MB holds 6 of them at once (422: the text is too long)
    assert statuses == [422, 503], statuses
    assert len(busy) >= CLIENTS - 2 * 6, len(busy)
    assert all(a["retry"] == "2" and "busy" in a["detail"] for a in busy)
    assert all("limit is 1000" in a["detail"] for a in answers if a["status"] == 422)
    assert statistics.median(a["s"] for a in busy) < 1.0  # answered before the body is read
    health = get_json(port, "/health")
    memory = health["memory"]
    assert memory["reserved_bytes"] == 0 and memory["budget_bytes"] == BUDGET_MB * 2**20
    assert 0 < memory["peak_bytes"] <= memory["budget_bytes"]
    assert memory["refused"] + health["pool"]["refused"] == len(busy)
    assert peak[0] - idle < (BUDGET_MB + 128) * 2**20, (peak[0] - idle) / 2**20
    time.sleep(1.0)
    assert rss_bytes(server.pid) - idle < 100 * 2**20, (rss_bytes(server.pid) - idle) / 2**20
    assert os.path.exists(f"/proc/{server.pid}") and server.poll() is None
