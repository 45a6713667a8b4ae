"""Load benchmark of `counterclip serve` on loopback: throughput, latency percentiles, 5xx count and
server memory, for a plain mixed workload and the same workload with a decompression bomb every 50
requests.

Loopback only (the server is started here on 127.0.0.1 and stopped at the end), bounded in requests and
in time: it stops by itself. Without --index it generates a shapes folder and indexes it with the
bundled model first.

    python scripts/bench_server.py                       # 2,000 requests x 2 phases, concurrency 16
    python scripts/bench_server.py --index shapes3k.idx --requests 500 --json

Figures depend on what else runs on the machine: report them with the load it had.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TEXTS = [
    "a red circle",
    "a blue square",
    "a small green triangle",
    "a large yellow star",
    "a purple cross on the left",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def build_shapes_index(folder: Path, n: int) -> Path:
    sys.path.insert(0, str(REPO))
    from counterclip.index_builder import build_index
    from counterclip.shapes import generate_folder
    from counterclip.shapes import vocabulary as shapes_vocabulary

    generate_folder(folder / "shapes", n=n, seed=1)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(shapes_vocabulary()) + "\n", encoding="utf-8")
    build_index(
        folder / "shapes",
        folder / "shapes.idx",
        model="bundled:shapes",
        vocab=vocab,
        device="cpu",
        progress=False,
    )
    return folder / "shapes.idx"


def bomb_body() -> bytes:
    """A 12000 x 12000 1-bit PNG (about 17 kB; 144 MB if decoded) as a search upload."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(buffer, format="PNG")
    return json.dumps({"image": {"base64": base64.b64encode(buffer.getvalue()).decode()}}).encode()


def workload(n: int, ids: list[int], seed: int, bomb_every: int) -> list[tuple[str, str, bytes | None]]:
    """``n`` requests: text and image searches, image files, counterfactuals of every side and mode."""
    rng = random.Random(seed)
    requests: list[tuple[str, str, bytes | None]] = []
    for i in range(n):
        if bomb_every and i % bomb_every == bomb_every - 1:
            requests.append(("POST", "/search", None))  # None: the bomb body, built once
            continue
        roll = rng.random()
        image = rng.choice(ids)
        text = rng.choice(TEXTS)
        if roll < 0.30:
            body: dict[str, Any] | None = {"text": text, "k": 24}
        elif roll < 0.45:
            body = {"image": {"id": image}, "k": 24}
        elif roll < 0.65:
            requests.append(("GET", f"/images/{image}", b""))
            continue
        elif roll < 0.85:
            body = {
                "image": {"id": image},
                "text": text,
                "mode": rng.choice(["increase", "decrease"]),
                "k": 5,
            }
        elif roll < 0.95:
            body = {"image": {"id": image}, "text": text, "side": "text", "mode": "decrease", "k": 5}
        else:
            body = {
                "image": {"id": image},
                "mode": "flip",
                "labels": TEXTS[:3],
                "target": TEXTS[rng.randrange(3)],
                "k": 3,
            }
        path = "/counterfactual" if "mode" in body or "side" in body else "/search"
        requests.append(("POST", path, json.dumps(body).encode()))
    return requests


def run_phase(
    port: int, pid: int, requests: list, bomb: bytes, concurrency: int, deadline: float
) -> dict[str, Any]:
    lock = threading.Lock()
    cursor = [0]
    results: list[tuple[int, float, str]] = []
    peak = [rss_mb(pid)]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb(pid))
            time.sleep(0.05)

    def worker() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.monotonic() < deadline:
            with lock:
                if cursor[0] >= len(requests):
                    break
                method, path, body = requests[cursor[0]]
                cursor[0] += 1
            payload = bomb if body is None else (body or None)
            started = time.perf_counter()
            try:
                headers = {"content-type": "application/json"} if payload else {}
                connection.request(method, path, body=payload, headers=headers)
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                status = 599  # connection dropped
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            with lock:
                results.append((status, time.perf_counter() - started, "bomb" if body is None else path))
        connection.close()

    before = rss_mb(pid)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(worker)
    elapsed = time.perf_counter() - started
    stop.set()
    sampler.join()
    latencies = sorted(t for s, t, kind in results if kind != "bomb")
    statuses: dict[str, int] = {}
    for status, _, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1

    def pct(q: float) -> float:
        return (
            1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")
        )

    return {
        "requests": len(results),
        "planned": len(requests),
        "seconds": round(elapsed, 2),
        "req_per_s": round(len(results) / elapsed, 1),
        "p50_ms": round(pct(0.50), 1),
        "p95_ms": round(pct(0.95), 1),
        "p99_ms": round(pct(0.99), 1),
        "statuses": statuses,
        "errors_5xx": sum(n for s, n in statuses.items() if s.startswith("5")),
        "bombs_refused_413": sum(1 for s, _, kind in results if kind == "bomb" and s == 413),
        "rss_before_mb": round(before, 1),
        "rss_after_mb": round(rss_mb(pid), 1),
        "rss_peak_mb": round(peak[0], 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, help="index directory (default: a generated shapes index)")
    parser.add_argument("--images", type=int, default=300, help="shapes images when no --index (default 300)")
    parser.add_argument(
        "--requests", type=int, default=2000, help="requests per phase (default 2000, max 20000)"
    )
    parser.add_argument("--concurrency", type=int, default=16, help="clients at once (default 16, max 64)")
    parser.add_argument(
        "--max-seconds", type=float, default=900, help="stop each phase after this (default 900)"
    )
    parser.add_argument("--workers", type=int, default=None, help="server workers (default: one per core)")
    parser.add_argument("--bomb-every", type=int, default=50, help="bomb phase: one bomb per N requests")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    requests_n = max(1, min(args.requests, 20_000))
    concurrency = max(1, min(args.concurrency, 64))

    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        index = args.index or build_shapes_index(Path(tmp), args.images)
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "counterclip",
            "serve",
            str(index),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--device",
            "cpu",
        ]
        if args.workers:
            command += ["--workers", str(args.workers)]
        log = open(Path(tmp) / "serve.log", "wb")
        server = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    connection.request("GET", "/health")
                    health = json.loads(connection.getresponse().read())
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(
                            "the server did not start: " + (Path(tmp) / "serve.log").read_text()[-2000:]
                        ) from None
                    time.sleep(0.25)
            connection.request("GET", "/info")
            info = json.loads(connection.getresponse().read())
            connection.close()
            ids = list(range(1, health["images"] + 1))
            bomb = bomb_body()
            warm = workload(50, ids, seed=0, bomb_every=0)
            run_phase(port, server.pid, warm, bomb, concurrency, time.monotonic() + args.max_seconds)
            plain = run_phase(
                port,
                server.pid,
                workload(requests_n, ids, 1, 0),
                bomb,
                concurrency,
                time.monotonic() + args.max_seconds,
            )
            bombs = run_phase(
                port,
                server.pid,
                workload(requests_n, ids, 1, args.bomb_every),
                bomb,
                concurrency,
                time.monotonic() + args.max_seconds,
            )
        finally:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()
    report = {
        "index": {"images": info["images"], "captions": info["captions"], "model": info["model"]},
        "cores": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "concurrency": concurrency,
        "server_pool": health["pool"],
        "plain": plain,
        "with_bombs": bombs,
        "bomb_rss_peak_over_plain_mb": round(bombs["rss_peak_mb"] - plain["rss_peak_mb"], 1),
    }
    ok = (
        plain["errors_5xx"] == 0
        and bombs["errors_5xx"] == 0
        and report["bomb_rss_peak_over_plain_mb"] < 500
        and plain["requests"] == plain["planned"]
        and bombs["requests"] == bombs["planned"]
    )
    report["ok"] = ok
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"index: {info['images']} images, {info['captions']} captions, {info['model']}; {os.cpu_count()} cores, load {report['load_average_1m']}"
        )
        print(
            f"server pool: {health['pool']['workers']} workers x {health['pool']['threads_per_worker']} threads, queue {health['pool']['queue']}"
        )
        for name, phase in (("plain", plain), (f"bomb every {args.bomb_every}", bombs)):
            print(
                f"{name:>15}: {phase['requests']}/{phase['planned']} requests in {phase['seconds']} s = {phase['req_per_s']} req/s; "
                f"p50 {phase['p50_ms']} ms, p95 {phase['p95_ms']} ms, p99 {phase['p99_ms']} ms; 5xx {phase['errors_5xx']}; "
                f"statuses {phase['statuses']}; RSS {phase['rss_before_mb']} -> {phase['rss_after_mb']} MB (peak {phase['rss_peak_mb']})"
            )
        print(
            f"bomb run peak RSS over the plain run: {report['bomb_rss_peak_over_plain_mb']} MB (bound 500); {'OK' if ok else 'FAILED'}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
