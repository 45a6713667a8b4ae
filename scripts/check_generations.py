"""Readers under updates: N readers query an index while a separate writer process runs 20 updates that
add, change and delete files (and change the caption vocabulary). Prints:

- failed queries (any exception; must be 0);
- answers from a mixed generation (an id, path, caption or count that is not the one of the generation
  the reader had pinned, or a score that is not the inner product of the query with the stored vector;
  must be 0), checked against the truth of every generation recorded after its update;
- late queries: queries that started after a switch (seen by an observer polling ``manifest.json``
  every millisecond) and still used an older generation (must be 0: readers call
  ``Index.newer_generation()`` before each query and move with ``Index.reopen()``);
- files of old generations left once every reader closed (must be 0).

Python readers are threads of this process (sharing nothing but the index directory) plus separate
reader processes. HTTP readers run when a server is given (``--base-url``) or started (``--serve``,
``counterclip serve`` on the index); otherwise that part is skipped with a message. They count failed
requests and, when ``/health`` reports a ``generation``, late answers.

Usage (from the repository root)::

    python scripts/check_generations.py                       # 20 updates, 4 reader threads, 2 processes
    python scripts/check_generations.py --serve               # also HTTP readers on `counterclip serve`
    python scripts/check_generations.py --workdir W --updates 0   # only build W/photos -> W/index
    python scripts/check_generations.py --workdir W --base-url http://127.0.0.1:8000   # a server on W/index
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the checkout this script lives in
from _index_checks import noise_image  # noqa: E402 - beside this script

from counterclip.index_builder import Index  # noqa: E402
from counterclip.index_builder.manifest import MANIFEST_NAME, manifest_generations  # noqa: E402

VOCABS = [
    ["a red circle", "a blue square", "a green triangle"],
    ["a red circle", "a yellow star", "a green triangle", "a small blue square"],
]


# --- the writer (a separate process) ----------------------------------------------------------------
def mutate(root: Path, vocab: Path, step: int) -> dict[str, int]:
    """Add 3 files, change 2, delete 2 (seeded by ``step``); every 4th step changes the vocabulary."""
    rng = np.random.default_rng(1000 + step)
    files = sorted(p for p in root.glob("*.jpg"))
    for i in range(3):
        noise_image(10_000 + 10 * step + i).save(root / f"new-{step:03d}-{i}.jpg", quality=90)
    picked = rng.choice(len(files), size=4, replace=False)
    for n, index in enumerate(picked):
        if n < 2:
            noise_image(20_000 + 10 * step + n).save(files[index], quality=90)  # changed in place
        else:
            files[index].unlink()
    if step % 4 == 3:
        vocab.write_text("\n".join(VOCABS[(step // 4 + 1) % 2]) + "\n")
    return {"added": 3, "changed": 2, "deleted": 2}


def writer_main(index_dir: Path, root: Path, vocab: Path, updates: int) -> None:
    """Run ``updates`` updates, one per line read on stdin (the parent records each generation between)."""
    from counterclip.index_builder import update_index
    from counterclip.index_builder.manifest import Manifest
    from counterclip.models import load_model

    model = load_model(Manifest.read(index_dir).model.spec, device="cpu")
    print(json.dumps({"ready": True}), flush=True)
    for step in range(updates):
        if not sys.stdin.readline():
            return
        mutate(root, vocab, step)
        started = time.time()
        summary = update_index(index_dir, model=model, progress=False)
        print(
            json.dumps(
                {
                    "generation": summary.generation,
                    "seconds": round(time.time() - started, 3),
                    "added": summary.added,
                    "changed": summary.changed,
                    "removed": summary.removed,
                    "captions": summary.captions,
                }
            ),
            flush=True,
        )


# --- Python readers ---------------------------------------------------------------------------------
def reader_loop(
    index_dir: Path, seed: int, stop: threading.Event | None, stop_file: Path | None
) -> list[dict]:
    """Query until stopped; each query moves to the newest generation first. Returns one record per query."""
    rng = np.random.default_rng(seed)
    records: list[dict] = []
    idx = Index.open(index_dir)
    try:
        while not (stop is not None and stop.is_set()) and not (stop_file is not None and stop_file.exists()):
            started = time.time()
            record: dict[str, Any] = {"start": started}
            try:
                if idx.newer_generation() is not None:
                    fresh = idx.reopen()
                    idx.close()
                    idx = fresh
                record["generation"] = idx.generation
                query = idx.images.vectors([int(rng.choice(idx.images.ids))])
                dist, labels = idx.images.search(query, 10)
                found = labels[0][labels[0] >= 0]
                stored = idx.images.vectors(found)
                record["score_ok"] = bool(np.allclose(dist[0][: len(found)], stored @ query[0], atol=1e-4))
                record["images"] = [
                    [int(i), m["path"], m["sha256"]]
                    for i, m in zip(found, idx.images.meta(found), strict=True)
                ]
                cdist, clabels = idx.captions.search(query, 3)
                cfound = clabels[0][clabels[0] >= 0]
                record["captions"] = [
                    [int(i), m["text"]] for i, m in zip(cfound, idx.captions.meta(cfound), strict=True)
                ]
                record["counts"] = [idx.images.count, idx.captions.count]
            except Exception as exc:  # noqa: BLE001 - counted as a failed query
                record["error"] = f"{type(exc).__name__}: {exc}"
            records.append(record)
    finally:
        idx.close()
    return records


def reader_child(index_dir: Path, out: Path, seed: int, stop_file: Path) -> None:
    records = reader_loop(index_dir, seed, None, stop_file)
    out.write_text("\n".join(json.dumps(r) for r in records) + "\n")


def truth_of(index_dir: Path) -> dict[str, Any]:
    with Index.open(index_dir) as idx:
        images = {m["id"]: [m["path"], m["sha256"]] for m in idx.images.meta(idx.images.ids)}
        captions = {m["id"]: m["text"] for m in idx.captions.meta(idx.captions.ids)}
        return {"generation": idx.generation, "images": images, "captions": captions}


def observe(index_dir: Path, switches: dict[int, float], stop: threading.Event) -> None:
    """Record when each generation became current (``manifest.json`` polled every millisecond)."""
    path = index_dir / MANIFEST_NAME
    key = None
    while not stop.is_set():
        try:
            st = os.stat(path)
            if (st.st_ino, st.st_mtime_ns) != key:
                now = time.time()
                generation = json.loads(path.read_text())["generation"]
                switches.setdefault(int(generation), now)
                key = (st.st_ino, st.st_mtime_ns)
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.001)


# --- HTTP readers -----------------------------------------------------------------------------------
def http_loop(base_url: str, stop: threading.Event, out: list[dict]) -> None:
    import httpx

    texts = ["a red circle", "a blue square", "a photo", "a green triangle"]
    with httpx.Client(base_url=base_url, timeout=60) as client:
        n = 0
        while not stop.is_set():
            n += 1
            started = time.time()
            record: dict[str, Any] = {"start": started}
            try:
                if n % 5 == 0:
                    response = client.get("/health")
                    record["kind"] = "health"
                    if response.status_code == 200 and "generation" in response.json():
                        record["generation"] = int(response.json()["generation"])
                else:
                    response = client.post("/search", json={"text": texts[n % len(texts)], "k": 5})
                    record["kind"] = "search"
                    if response.status_code == 200 and "generation" in response.json():
                        record["generation"] = int(response.json()["generation"])
                record["status"] = response.status_code
            except Exception as exc:  # noqa: BLE001 - counted as a failed request
                record["error"] = f"{type(exc).__name__}: {exc}"
            out.append(record)


def start_server(index_dir: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "counterclip",
            "serve",
            str(index_dir),
            "--port",
            str(port),
            "--device",
            "cpu",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(index_dir.parent / "server.log", "wb"),  # noqa: SIM115 - the server's lifetime
    )
    import httpx

    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not start")


# --- the run ----------------------------------------------------------------------------------------
def prepare(workdir: Path, n: int, model: str) -> tuple[Path, Path, Path]:
    root, index_dir, vocab = workdir / "photos", workdir / "index", workdir / "vocab.txt"
    if (index_dir / MANIFEST_NAME).exists():
        return root, index_dir, vocab
    from counterclip.index_builder import IndexCfg, build_index

    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        noise_image(i).save(root / f"img-{i:04d}.jpg", quality=90)
    vocab.write_text("\n".join(VOCABS[0]) + "\n")
    cfg = IndexCfg(name="generations", shard_size=64, batch_size=32, recall_sample=200)
    build_index(root, index_dir, model=model, vocab=vocab, device="cpu", progress=False, config=cfg)
    return root, index_dir, vocab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--readers", type=int, default=4, help="reader threads in this process")
    parser.add_argument("--reader-processes", type=int, default=2, help="reader processes")
    parser.add_argument("--images", type=int, default=300, help="images of the first build")
    parser.add_argument("--model", default="bundled:shapes")
    parser.add_argument("--workdir", type=Path, default=None, help="keep photos/ and index/ here (reused)")
    parser.add_argument("--base-url", default=None, help="HTTP readers against a server on WORKDIR/index")
    parser.add_argument("--serve", action="store_true", help="start `counterclip serve` for HTTP readers")
    parser.add_argument("--http-readers", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--writer-child", nargs=4, metavar=("INDEX", "ROOT", "VOCAB", "UPDATES"), help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--reader-child", nargs=4, metavar=("INDEX", "OUT", "SEED", "STOP"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.writer_child:
        index_dir, root, vocab, updates = args.writer_child
        writer_main(Path(index_dir), Path(root), Path(vocab), int(updates))
        return
    if args.reader_child:
        index_dir, out, seed, stop = args.reader_child
        reader_child(Path(index_dir), Path(out), int(seed), Path(stop))
        return

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cc-generations-"))
    started = time.time()
    root, index_dir, vocab = prepare(workdir, args.images, args.model)
    print(f"index {index_dir} ({time.time() - started:.0f} s to build or find)", file=sys.stderr)
    if args.updates == 0:
        return
    truths = {}
    first = truth_of(index_dir)
    truths[first["generation"]] = first

    server = None
    base_url = args.base_url
    if args.serve and base_url is None:
        server, base_url = start_server(index_dir)
    stop = threading.Event()
    switches: dict[int, float] = {}
    observer = threading.Thread(target=observe, args=(index_dir, switches, stop), daemon=True)
    observer.start()
    results: queue.Queue[list[dict]] = queue.Queue()
    threads = [
        threading.Thread(target=lambda s=s: results.put(reader_loop(index_dir, s, stop, None)))
        for s in range(args.readers)
    ]
    stop_file = workdir / "stop-readers"
    stop_file.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    children = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--reader-child",
                str(index_dir),
                str(workdir / f"reader-{i}.jsonl"),
                str(100 + i),
                str(stop_file),
            ],
            env=env,
        )
        for i in range(args.reader_processes)
    ]
    http_records: list[dict] = []
    http_threads = []
    if base_url:
        http_threads = [
            threading.Thread(target=http_loop, args=(base_url, stop, http_records))
            for _ in range(args.http_readers)
        ]
    for thread in threads + http_threads:
        thread.start()

    writer = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--writer-child",
            str(index_dir),
            str(root),
            str(vocab),
            str(args.updates),
        ],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert json.loads(writer.stdout.readline())["ready"]
    time.sleep(2.0)  # the reader processes are up and querying
    updates = []
    for _ in range(args.updates):
        writer.stdin.write("go\n")
        writer.stdin.flush()
        done = json.loads(writer.stdout.readline())
        updates.append(done)
        truth = truth_of(index_dir)
        assert truth["generation"] == done["generation"], (truth["generation"], done)
        truths[truth["generation"]] = truth
        time.sleep(0.5)  # queries on the new generation before the next update
    writer.stdin.close()
    writer.wait(timeout=600)
    time.sleep(1.0)
    stop.set()
    stop_file.write_text("stop")
    for thread in threads + http_threads:
        thread.join(timeout=300)
    for child in children:
        child.wait(timeout=300)
    if server is not None:
        server.terminate()
        server.wait(timeout=60)
    records: list[dict] = []
    while not results.empty():
        records += results.get()
    python_threads = len(records)
    for i in range(args.reader_processes):
        lines = (workdir / f"reader-{i}.jsonl").read_text().splitlines()
        records += [json.loads(line) for line in lines if line.strip()]

    report = evaluate(records, truths, switches, http_records, updates)
    report["python_reader_threads_queries"] = python_threads
    report["http"] = (
        summarize_http(http_records, switches) if base_url else "skipped: no --base-url or --serve given"
    )
    report["leftover_generations"] = [g for g in manifest_generations(index_dir) if g != max(truths)]
    report["workdir"] = str(workdir)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


def evaluate(records, truths, switches, http_records, updates) -> dict[str, Any]:  # noqa: ANN001
    failed = [r for r in records if "error" in r]
    mixed = []
    for r in records:
        if "error" in r:
            continue
        truth = truths.get(r["generation"])
        if truth is None:
            mixed.append(("unknown generation", r["generation"]))
            continue
        images, captions = truth["images"], truth["captions"]
        bad = (
            not r["score_ok"]
            or r["counts"] != [len(images), len(captions)]
            or any(images.get(i) != [p, s] for i, p, s in r["images"])
            or any(captions.get(i) != t for i, t in r["captions"])
        )
        if bad:
            mixed.append((r["generation"], r))
    late = 0
    for r in records:
        if "generation" not in r:
            continue
        newest_before = max((g for g, t in switches.items() if t + 0.002 < r["start"]), default=None)
        if newest_before is not None and r["generation"] < newest_before:
            late += 1
    per_generation = {}
    for r in records:
        if "generation" in r:
            per_generation[r["generation"]] = per_generation.get(r["generation"], 0) + 1
    return {
        "updates": len(updates),
        "generations": sorted(truths),
        "update_seconds_median": float(np.median([u["seconds"] for u in updates])) if updates else None,
        "queries": len(records),
        "failed_queries": len(failed),
        "failed_examples": [r["error"] for r in failed[:5]],
        "mixed_generation_answers": len(mixed),
        "mixed_examples": [str(m)[:300] for m in mixed[:3]],
        "late_queries": late,
        "queries_per_generation": per_generation,
    }


def summarize_http(records: list[dict], switches: dict[int, float]) -> dict[str, Any]:
    failed = [r for r in records if "error" in r or r.get("status") != 200]
    reported = [r for r in records if "generation" in r]
    late = 0
    for r in reported:
        newest_before = max((g for g, t in switches.items() if t + 0.002 < r["start"]), default=None)
        if newest_before is not None and r["generation"] < newest_before:
            late += 1
    return {
        "requests": len(records),
        "failed_requests": len(failed),
        "failed_examples": [r.get("error") or r.get("status") for r in failed[:5]],
        "generation_reported": bool(reported),
        "generations_seen": sorted({r["generation"] for r in reported}),
        "late_answers": late if reported else "n/a: the server reports no generation",
    }


def print_report(report: dict[str, Any]) -> None:
    print(
        f"updates                  {report['updates']} (median {report['update_seconds_median']:.2f} s each)"
    )
    print(f"generations              {report['generations'][0]}..{report['generations'][-1]}")
    print(
        f"python queries           {report['queries']} ({report['python_reader_threads_queries']} from threads)"
    )
    print(f"failed queries           {report['failed_queries']} {report['failed_examples'] or ''}")
    print(f"mixed-generation answers {report['mixed_generation_answers']} {report['mixed_examples'] or ''}")
    print(
        f"late queries             {report['late_queries']} (started after a switch, answered from before it)"
    )
    print(f"leftover generations     {report['leftover_generations']}")
    http = report["http"]
    if isinstance(http, str):
        print(f"http                     {http}")
    else:
        print(
            f"http                     {http['requests']} requests, {http['failed_requests']} failed "
            f"{http['failed_examples'] or ''}; generation reported: {http['generation_reported']} "
            f"{http['generations_seen']}; late: {http['late_answers']}"
        )


if __name__ == "__main__":
    main()
