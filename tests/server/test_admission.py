"""Memory is a budget: requests are admitted against it (and against the pool) before a body is read,
uploads reserve their decoded size before decoding, and the automatic queue holds what the workers
serve in ``max_wait`` seconds."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from server_kit import LOCAL

from counterclip.errors import InputError
from counterclip.server.admission import (
    JSON_DEPTH,
    REQUEST_BYTES,
    VALUE_BYTES,
    AdmissionGuard,
    BudgetExceeded,
    MemoryBudget,
    Ticket,
    json_values,
)
from counterclip.server.app import create_app
from counterclip.server.files import decoded_bytes
from counterclip.server.pool import FIRST_GUESS_SECONDS, ServerBusy, WorkerPool
from counterclip.server.settings import BODY_FACTOR, Limits, ServerSettings


def test_budget_and_ticket_count_bytes() -> None:
    budget = MemoryBudget(1000, retry_after=4)
    first, second = Ticket(budget, 0), Ticket(budget, 0)
    first.grow(600, "a")
    second.grow(400, "b")
    assert budget.stats() == {"budget_bytes": 1000, "reserved_bytes": 1000, "peak_bytes": 1000, "refused": 0}
    with pytest.raises(BudgetExceeded) as caught:
        second.grow(1, "one byte more")
    assert caught.value.status_code == 503 and caught.value.headers == {"retry-after": "4"}
    assert "one byte more" in caught.value.detail
    assert second.held == 400 and budget.stats()["refused"] == 1
    first.close()
    second.grow(600, "c")
    assert second.held == 1000 and budget.reserved == 1000
    second.close()
    assert budget.stats() == {"budget_bytes": 1000, "reserved_bytes": 0, "peak_bytes": 1000, "refused": 1}


def test_json_values_bound_and_decoded_size() -> None:
    assert json_values(b'{"text": "a, b, c"}') == 2 + JSON_DEPTH + 1
    assert json_values(b"[" + b"[]," * 1000 + b"[]]") == 1000 + JSON_DEPTH + 1
    assert decoded_bytes(100, 50, "RGB") == 15_000
    assert decoded_bytes(100, 50, "RGBA") == 35_000  # the RGBA decode, then its RGB copy
    assert decoded_bytes(100, 50, "P") == 20_000


def test_budget_must_hold_one_request_at_the_limits() -> None:
    limits = Limits(max_body_bytes=1_000_000, max_upload_pixels=1_000_000)
    ServerSettings(limits=limits, memory_budget=BODY_FACTOR * 1_000_000 + 3_000_000)
    with pytest.raises(InputError, match="cannot hold one request"):
        ServerSettings(limits=limits, memory_budget=BODY_FACTOR * 1_000_000 + 3_000_000 - 1)


def test_automatic_queue_holds_max_wait_seconds_of_work() -> None:
    pool = WorkerPool(workers=2, threads=1, queue=None, max_wait=1.0)
    try:
        slots = []
        # first guess 0.25 s a call: 2 run, and waiting work up to (sum + 0.25) / 2 <= 1 s: 8 in all
        with pytest.raises(ServerBusy):
            for _ in range(100):
                slots.append(pool.admit("/counterfactual"))
        assert FIRST_GUESS_SECONDS == 0.25 and len(slots) == 8
        assert pool.stats()["in_flight"] == 8 and pool.stats()["refused"] == 1
        for slot in slots:
            slot.seconds = 0.125  # measured: each took 125 ms
            pool.leave(slot)
        assert pool.stats()["seconds"] == {"/counterfactual": 0.125}
        slots = []
        with pytest.raises(ServerBusy):
            for _ in range(100):
                slots.append(pool.admit("/counterfactual"))
        assert len(slots) == 16  # (n * 0.125 + 0.125) / 2 <= 1 s
        with pytest.raises(ServerBusy):  # a kind not measured yet (0.25 s) does not fit behind them
            pool.admit("/search")
    finally:
        pool.shutdown()


def test_a_fixed_queue_ignores_the_seconds() -> None:
    pool = WorkerPool(workers=1, threads=1, queue=3, max_wait=0.001)
    try:
        slots = [pool.admit("x") for _ in range(4)]
        with pytest.raises(ServerBusy):
            pool.admit("x")
        for slot in slots:
            pool.leave(slot)
    finally:
        pool.shutdown()


class Recorder:
    """An ASGI receive that counts how often the app asked for the body."""

    def __init__(self, body: bytes) -> None:
        self.body, self.calls = body, 0

    async def __call__(self) -> dict:
        self.calls += 1
        return {"type": "http.request", "body": self.body, "more_body": False}


def call_guard(guard: AdmissionGuard, path: str, body: bytes, length: int) -> tuple[list[dict], int]:
    sent: list[dict] = []
    receive = Recorder(body)

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(b"content-length", str(length).encode())],
    }
    asyncio.run(guard(scope, receive, send))
    return sent, receive.calls


def test_over_the_budget_is_a_503_before_the_body_is_read() -> None:
    reached = []

    async def app(scope, receive, send) -> None:
        reached.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    pool = WorkerPool(workers=1, threads=1, queue=0)
    budget = MemoryBudget(REQUEST_BYTES + BODY_FACTOR * 1000 + VALUE_BYTES * (JSON_DEPTH + 1), retry_after=9)
    guard = AdmissionGuard(app, pool, budget, body_timeout=5)
    try:
        over = (budget.budget - REQUEST_BYTES) // BODY_FACTOR + 1  # its Content-Length alone is too much
        sent, reads = call_guard(guard, "/search", b"x" * over, over)
        assert sent[0]["status"] == 503 and (b"retry-after", b"9") in sent[0]["headers"]
        assert reads == 0 and reached == []
        assert "memory budget" in json.loads(sent[1]["body"])["detail"]
        sent, reads = call_guard(guard, "/search", b"," * 1000, 1000)  # read, then too many JSON values
        assert sent[0]["status"] == 503 and reads == 1 and reached == [] and budget.reserved == 0
        sent, reads = call_guard(guard, "/search", b"y" * 1000, 1000)  # exactly the budget
        assert sent[0]["status"] == 200 and reached == [b"y" * 1000]
        assert budget.stats()["peak_bytes"] == budget.budget and budget.reserved == 0
        assert pool.stats()["in_flight"] == 0
        slot = pool.admit("other")  # the pool is full: a query is refused before its body is read
        sent, reads = call_guard(guard, "/search", b"{}", 2)
        assert sent[0]["status"] == 503 and reads == 0 and budget.reserved == 0
        assert "queue full" in json.loads(sent[1]["body"])["detail"]
        pool.leave(slot)
    finally:
        pool.shutdown()


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_upload_reserves_its_decoded_size_before_decoding(colour_engine) -> None:
    limits = Limits(max_body_bytes=64 * 1024, max_upload_bytes=48 * 1024, max_upload_pixels=1_000_000)
    body = json.dumps({"image": {"base64": base64.b64encode(png(1000, 1000)).decode()}, "k": 2}).encode()
    needed = REQUEST_BYTES + BODY_FACTOR * len(body) + VALUE_BYTES * json_values(body) + 3 * 1000 * 1000
    for budget, status in ((needed - 1, 503), (needed, 200)):
        settings = ServerSettings(workers=1, limits=limits, memory_budget=budget)
        with TestClient(create_app(colour_engine, settings), base_url=LOCAL) as client:
            response = client.post("/search", content=body, headers={"content-type": "application/json"})
            assert response.status_code == status, response.text
            memory = client.get("/health").json()["memory"]
            assert memory["reserved_bytes"] == 0
            if status == 503:
                assert response.headers["retry-after"] == "2"
                assert "1000 x 1000 pixels" in response.json()["detail"]
                assert memory["peak_bytes"] == needed - 3_000_000 and memory["refused"] == 1
            else:
                assert memory["peak_bytes"] == needed and memory["refused"] == 0
