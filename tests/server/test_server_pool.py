"""Under load: a bounded pool runs N calls at once with T torch threads each, and a full queue answers 503
with Retry-After at once instead of letting latency grow."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time

import pytest
from server_kit import ThreadServer

from counterclip.server.app import create_app
from counterclip.server.pool import ServerBusy, WorkerPool
from counterclip.server.settings import ServerSettings, available_cores


def test_pool_sets_threads_per_worker_and_bounds_the_queue() -> None:
    import torch

    pool = WorkerPool(workers=2, threads=1, queue=1, retry_after=7)
    gate = threading.Event()

    async def scenario() -> tuple[list[int], list[str]]:
        seen = [await pool.run(torch.get_num_threads) for _ in range(4)]
        running = [asyncio.ensure_future(pool.run(gate.wait, 30)) for _ in range(3)]  # 2 run + 1 waits
        await asyncio.sleep(0.2)
        refused = []
        try:
            await pool.run(lambda: None)
        except ServerBusy as exc:
            refused.append(f"{exc.retry_after}")
        assert pool.stats()["in_flight"] == 3 and pool.stats()["refused"] == 1
        gate.set()
        await asyncio.gather(*running)
        return seen, refused

    try:
        seen, refused = asyncio.run(scenario())
    finally:
        pool.shutdown()
    assert seen == [1, 1, 1, 1]
    assert refused == ["7"]
    assert pool.stats()["in_flight"] == 0


def test_default_pool_is_sized_to_the_machine() -> None:
    settings = ServerSettings()
    cores = available_cores()
    assert settings.pool_workers == cores
    assert settings.pool_workers * settings.pool_threads <= max(cores, settings.pool_workers)
    assert ServerSettings(workers=1).pool_threads == cores
    assert ServerSettings(workers=1, torch_threads=3).pool_threads == 3


def post(port: int, body: dict, out: list) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request(
        "POST", "/search", body=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    response = connection.getresponse()
    out.append((response.status, response.getheader("retry-after"), json.loads(response.read())))
    connection.close()


@pytest.mark.parametrize("queue", [0, 2])
def test_full_queue_answers_503_with_retry_after(colour_engine, queue: int) -> None:
    settings = ServerSettings(workers=1, queue=queue, retry_after=3)
    with ThreadServer(create_app(colour_engine, settings)) as server:
        held: list = []
        first = threading.Thread(target=post, args=(server.port, {"text": "block"}, held))
        first.start()
        assert colour_engine.blocked.wait(10)
        waiting = [
            threading.Thread(target=post, args=(server.port, {"text": "red"}, held)) for _ in range(queue)
        ]
        for t in waiting:
            t.start()
        deadline = time.monotonic() + 20  # the queued calls are admitted before the refused one is sent
        while json.loads(_get(server.port, "/health"))["pool"]["in_flight"] < 1 + queue:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        refused: list = []
        post(server.port, {"text": "red"}, refused)
        status, retry_after, body = refused[0]
        assert status == 503 and retry_after == "3" and "busy" in body["detail"]
        colour_engine.release.set()
        first.join(30)
        for t in waiting:
            t.join(30)
        assert sorted(s for s, _, _ in held) == [200] * (1 + queue)
        stats = json.loads(_get(server.port, "/health"))["pool"]
        assert stats["refused"] == 1 and stats["in_flight"] == 0


def _get(port: int, path: str) -> bytes:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", path)
    data = connection.getresponse().read()
    connection.close()
    return data
