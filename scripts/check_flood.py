"""Flood check of `counterclip serve` on loopback: memory and 503s under floods of clients.

Phases, each against a fresh idle server (started here on 127.0.0.1, stopped at the end; bounded in
clients and time, it stops by itself):

- ``bodies``: 160 clients at once, each posting a 15 MB JSON body to ``/search``;
- ``counterfactual``: 64 clients at once posting ``/counterfactual`` (small bodies), automatic queue;
- ``counterfactual_queue8``: the same with ``--queue 8`` (56 of them must get a 503 at once);
- ``uploads``: 64 clients at once posting ``/counterfactual`` with a large upload (a 2,000 x 2,000 JPEG).

A second process sends `PROBES` more requests during each flood (its clients share one interpreter
lock; the probes show what one more client sees). For each phase it prints the server's RSS when idle, its peak over idle during the phase and its RSS over idle
after it (2 s later), the answers by status, and the latency of the 503s (time to the status line, the
client still sending) and of the 200s. The checks (issue 28): peak <= 1.5 GB over idle, back within
100 MB of idle, the probes' 503s within 100 ms (median), no query served later than twice --max-wait unless others
got a 503, and no 5xx other than 503.

    python scripts/check_flood.py                    # a generated 300-image shapes index
    python scripts/check_flood.py --index photos.idx --json

Figures depend on what else runs on the machine: report them with the load it had.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_server import REPO, build_shapes_index, free_port, rss_mb  # noqa: E402

PEAK_LIMIT_MB = 1536
AFTER_LIMIT_MB = 100
FAST_503_S = 0.1
PROBES = 10  # requests sent by a second process during each flood
PIECE = 256 * 1024  # bytes a client writes at a time
MAX_WAIT_S = 3.0  # the automatic queue's default --max-wait


async def post(port: int, path: str, body: bytes, timeout: float) -> dict[str, Any]:
    """POST ``body`` in 256 kB pieces while the answer is read (so a 503 sent before the body is read is
    seen when it arrives): status, Retry-After, seconds to the status line and to the end of the answer."""
    started = time.perf_counter()
    record: dict[str, Any] = {"status": 0, "retry_after": None, "t_status": None, "t_done": None}
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except (OSError, TimeoutError) as exc:
        return {**record, "error": type(exc).__name__}
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()

    async def send() -> None:
        view = memoryview(body)
        try:
            writer.write(head)
            for start in range(0, len(view), PIECE):
                writer.write(view[start : start + PIECE])
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass  # answered and closed: the answer is read below

    sender = asyncio.ensure_future(send())
    try:
        record.update(await asyncio.wait_for(read_answer(reader, started), timeout))
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
        record["error"] = type(exc).__name__
    finally:
        sender.cancel()
        writer.close()
    return record


async def read_answer(reader: asyncio.StreamReader, started: float) -> dict[str, Any]:
    """Status, Retry-After, time to the status line and to the end of the answer (by Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    answer: dict[str, Any] = {"t_status": time.perf_counter() - started}
    lines = head.decode("latin-1").strip().split("\r\n")
    answer["status"] = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    answer["retry_after"] = headers.get("retry-after")
    await reader.readexactly(int(headers.get("content-length", "0")))
    answer["t_done"] = time.perf_counter() - started
    return answer


def flood(port: int, pid: int, path: str, body: bytes, clients: int, timeout: float) -> dict[str, Any]:
    """``clients`` POSTs of ``body`` at once; the server's RSS sampled every 10 ms."""
    idle = rss_mb(pid)
    peak = [idle]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb(pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        handle.write(body)
    probe = subprocess.Popen(
        [sys.executable, __file__, "--probe", str(port), path, handle.name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert probe.stdout is not None and probe.stdin is not None
    probe.stdout.readline()  # "ready": imported and holding its body
    probe.stdin.write(b"go\n")
    probe.stdin.flush()
    started = time.perf_counter()

    async def all_clients() -> list[dict[str, Any]]:
        return await asyncio.gather(*(post(port, path, body, timeout) for _ in range(clients)))

    out = asyncio.run(all_clients())
    wall = time.perf_counter() - started
    probes = json.loads(probe.communicate(timeout=timeout + 30)[0] or b"[]")
    os.unlink(handle.name)
    time.sleep(2.0)
    stop.set()
    sampler.join()
    after = rss_mb(pid)
    summary = summarise(out, idle, peak[0], after, wall)
    return {**summary, "probes": summarise(probes, idle, peak[0], after, wall)}


def run_probes(port: int, path: str, body_file: str, count: int = PROBES) -> list[dict[str, Any]]:
    """In a process of its own (its own interpreter lock, unlike the flood's clients): ``count`` more
    requests while the flood runs, one after another (20 ms apart) from 50 ms after it starts."""
    body = Path(body_file).read_bytes()
    print("ready", flush=True)
    sys.stdin.readline()  # the flood starts now

    async def probes() -> list[dict[str, Any]]:
        await asyncio.sleep(0.05)
        out = []
        for _ in range(count):
            out.append(await post(port, path, body, 60))
            await asyncio.sleep(0.02)
        return out

    return asyncio.run(probes())


def summarise(
    out: list[dict[str, Any]], idle: float, peak: float, after: float, wall: float
) -> dict[str, Any]:
    by_status: dict[str, int] = {}
    for r in out:
        key = str(r["status"]) if not r.get("error") or r["status"] else r["error"]
        by_status[key] = by_status.get(key, 0) + 1
    busy = sorted(r["t_status"] for r in out if r["status"] == 503 and r["t_status"] is not None)
    served = sorted(r["t_done"] for r in out if r["status"] not in (0, 503) and r["t_done"] is not None)

    def stats(values: list[float]) -> dict[str, float] | None:
        if not values:
            return None
        return {
            "median_s": round(statistics.median(values), 4),
            "p90_s": round(values[int(0.9 * (len(values) - 1))], 4),
            "max_s": round(values[-1], 4),
        }

    return {
        "idle_rss_mb": round(idle, 1),
        "peak_over_idle_mb": round(peak - idle, 1),
        "after_over_idle_mb": round(after - idle, 1),
        "answers": dict(sorted(by_status.items())),
        "retry_after": sorted({r["retry_after"] for r in out if r["status"] == 503}),
        "latency_503": stats(busy),
        "latency_served": stats(served),
        "wall_s": round(wall, 2),
    }


def big_json(megabytes: float) -> bytes:
    """``{"text": "aaaa..."}`` of the given size."""
    n = int(megabytes * 1_000_000) - len('{"text": ""}')
    return b'{"text": "' + b"a" * n + b'"}'


def upload_body(side: int = 2000) -> bytes:
    """A counterfactual with an uploaded noise JPEG (side x side, a few MB)."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    data = base64.b64encode(buffer.getvalue()).decode()
    return json.dumps({"image": {"base64": data}, "text": "a red circle"}).encode()


def start_server(index: Path, tmp: Path, extra: list[str]) -> tuple[subprocess.Popen, int, Any]:
    port = free_port()
    command = [sys.executable, "-m", "counterclip", "serve", str(index), "--port", str(port)]
    command += ["--device", "cpu", *extra]
    log = open(tmp / f"serve-{port}.log", "wb")
    server = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start: " + log.name) from None
            time.sleep(0.25)
    return server, port, log


def stop_server(server: subprocess.Popen, log: Any) -> None:
    server.terminate()
    try:
        server.wait(20)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


def warm_up(port: int) -> None:
    """One search and one counterfactual, so the idle figure is a server that has answered."""
    for path, body in (
        ("/search", {"text": "a red circle"}),
        ("/counterfactual", {"image": {"id": 1}, "text": "a red circle"}),
    ):
        asyncio.run(post(port, path, json.dumps(body).encode(), 60))


def checks(report: dict[str, Any]) -> list[str]:
    """The failed checks, in words (empty: all passed)."""
    failed = []
    for name, phase in report["phases"].items():
        if phase["peak_over_idle_mb"] > PEAK_LIMIT_MB:
            failed.append(f"{name}: peak {phase['peak_over_idle_mb']} MB over idle > {PEAK_LIMIT_MB}")
        if phase["after_over_idle_mb"] > AFTER_LIMIT_MB:
            failed.append(f"{name}: {phase['after_over_idle_mb']} MB over idle after > {AFTER_LIMIT_MB}")
        probed = phase["probes"]["latency_503"]
        if probed and probed["median_s"] > FAST_503_S:
            failed.append(f"{name}: median probe 503 after {probed['median_s']} s > {FAST_503_S}")
        bad = {k: v for k, v in phase["answers"].items() if k.startswith("5") and k != "503"}
        if bad:
            failed.append(f"{name}: server errors {bad}")
        served = phase["latency_served"]
        if served and served["max_s"] > 2 * MAX_WAIT_S and not phase["answers"].get("503"):
            failed.append(f"{name}: served after up to {served['max_s']} s and no 503")
    if not report["phases"]["counterfactual_queue8"]["answers"].get("503"):
        failed.append("counterfactual_queue8: no 503 with a queue of 8")
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, help="index directory (default: a generated shapes index)")
    parser.add_argument("--images", type=int, default=300, help="shapes images when no --index (default 300)")
    parser.add_argument(
        "--clients", type=int, default=160, help="bodies phase: clients (default 160, max 200)"
    )
    parser.add_argument("--body-mb", type=float, default=15.0, help="bodies phase: MB per body (default 15)")
    parser.add_argument("--queries", type=int, default=64, help="counterfactual phases: clients (default 64)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request at most")
    parser.add_argument("--serve-args", default="", help="extra `counterclip serve` options, quoted")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--probe", nargs=3, metavar=("PORT", "PATH", "BODY_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        print("\n" + json.dumps(run_probes(int(args.probe[0]), args.probe[1], args.probe[2])))
        return 0
    clients, queries = max(1, min(args.clients, 200)), max(1, min(args.queries, 100))
    with tempfile.TemporaryDirectory(prefix="check-flood-") as tmp_name:
        tmp = Path(tmp_name)
        index = args.index or build_shapes_index(tmp, args.images)
        query = json.dumps({"image": {"id": 1}, "text": "a red circle"}).encode()
        phases = {
            "bodies": ("/search", big_json(min(args.body_mb, 15.9)), clients, []),
            "counterfactual": ("/counterfactual", query, queries, []),
            "counterfactual_queue8": ("/counterfactual", query, queries, ["--queue", "8"]),
            "uploads": ("/counterfactual", upload_body(), queries, []),
        }
        report: dict[str, Any] = {"cores": os.cpu_count(), "phases": {}}
        for name, (path, body, n, extra) in phases.items():
            server, port, log = start_server(index, tmp, [*args.serve_args.split(), *extra])
            try:
                warm_up(port)
                time.sleep(1.0)
                report["phases"][name] = {
                    "clients": n,
                    "body_bytes": len(body),
                    **flood(port, server.pid, path, body, n, args.timeout),
                }
            finally:
                stop_server(server, log)
        report["load_average_1m"] = round(os.getloadavg()[0], 2)
    report["failed"] = checks(report)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for name, phase in report["phases"].items():
            print(
                f"{name}: {phase['clients']} clients x {phase['body_bytes'] / 1e6:.1f} MB: idle {phase['idle_rss_mb']} MB, "
                f"peak +{phase['peak_over_idle_mb']} MB, after +{phase['after_over_idle_mb']} MB; answers {phase['answers']}; "
                f"503 {phase['latency_503']}; served {phase['latency_served']}; wall {phase['wall_s']} s"
            )
            probes = phase["probes"]
            print(f"  probes from a second process: {probes['answers']}; 503 {probes['latency_503']}")
        print("checks: " + ("all passed" if not report["failed"] else "; ".join(report["failed"])))
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
