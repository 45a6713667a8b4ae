"""Damage matrix: every data file of an index truncated, zeroed, garbled (256 random bytes) or deleted,
then every command run on it: open (the Python `Index`, all vectors and a search for each),
``search``, ``info``, ``update`` and ``check``. Prints, per command, how many runs gave a correct answer,
a one-line error (exit 2, no traceback), or anything else (a silent wrong answer, a traceback, another
exit status), whether ``check`` named the damaged file, and whether ``update --repair`` restored an
index equal to a clean build (and ``check`` then passes).

Each (file, damage) pair runs on a fresh copy of the index in a worker process, through the CLI's own
entry point; a worker that crashes is counted against the case it was running and a new one continues
with the next case.

Then (unless ``--skip-more``, `_damage_more`): the ONNX cache damaged (sign flips and garbling, with and
without the record rewritten to match), damaged ``merge`` parts, and the read cost of the shard
checksums.

Usage (from the repository root)::

    python scripts/check_damage.py            # bundled model, 60 images, shards of 16 -> ~100 runs
    python scripts/check_damage.py --json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the checkout this script lives in
from _damage_more import bench_reads, merge_battery, onnx_battery  # noqa: E402 - beside this script
from _index_checks import noise_image  # noqa: E402 - beside this script

MODES = ("truncate", "zero", "garble", "delete", "signflip")
COMMANDS = ("open", "search", "search-image", "info", "update", "check")


def damage(path: Path, mode: str, seed: int) -> None:
    """Cut in half, zero, overwrite 256 bytes in the middle with random ones, delete, or flip one bit
    (``signflip``: in a vector shard the sign of one float of its middle row, which stays unit length;
    elsewhere the lowest bit of the middle byte)."""
    if mode == "delete":
        path.unlink()
        return
    data = bytearray(path.read_bytes())
    if mode == "signflip":
        if path.suffix == ".npy" and not path.name.endswith(".ids.npy"):
            array = np.load(path)
            at = len(data) - array.nbytes + (len(array) // 2) * array.shape[1] * 4 + 3
            data[at] ^= 0x80
        else:
            data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
        return
    if mode == "truncate":
        data = data[: len(data) // 2]
    elif mode == "zero":
        data = bytearray(len(data))
    else:
        n = min(256, len(data))
        start = (len(data) - n) // 2
        noise = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
        data[start : start + n] = noise
    path.write_bytes(bytes(data))


def snapshot(index_dir: Path) -> dict[str, Any]:
    """What must equal a clean build: path -> (id, vector, size, sha), caption -> vector, errors, counts."""
    from counterclip.index_builder import Index

    with Index.open(index_dir) as idx:
        ids = idx.images.ids
        vectors = idx.images.vectors(ids)
        images = {
            m["path"]: (m["id"], vectors[i], m["width"], m["height"], m["sha256"])
            for i, m in enumerate(idx.images.meta(ids))
        }
        cvec = idx.captions.vectors(idx.captions.ids)
        captions = {m["text"]: cvec[i] for i, m in enumerate(idx.captions.meta(idx.captions.ids))}
        errors = {e["path"]: e["reason"] for e in idx.errors()}
        return {
            "images": images,
            "captions": captions,
            "errors": errors,
            "counts": (idx.images.count, idx.captions.count),
        }


def same_index(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a["counts"] != b["counts"] or a["errors"] != b["errors"] or sorted(a["images"]) != sorted(b["images"]):
        return False
    for path, (id_a, vec_a, *rest_a) in a["images"].items():
        id_b, vec_b, *rest_b = b["images"][path]
        if id_a != id_b or rest_a != rest_b or not np.allclose(vec_a, vec_b, atol=2e-5):
            return False
    if sorted(a["captions"]) != sorted(b["captions"]):
        return False
    return all(np.allclose(v, b["captions"][t], atol=2e-5) for t, v in a["captions"].items())


def open_answers(index_dir: Path) -> dict[str, Any]:
    """The Python reader's answers: every vector, the top 5 of each, all metadata."""
    from counterclip.index_builder import Index

    with Index.open(index_dir) as idx:
        vectors = idx.images.vectors(idx.images.ids)
        dist, labels = idx.images.search(vectors, 5)
        return {
            "meta": idx.images.meta(idx.images.ids),
            "vectors": np.round(vectors, 6).tolist(),
            "search": [np.round(dist, 5).tolist(), labels.tolist()],
            "captions": idx.captions.meta(idx.captions.ids),
            "errors": idx.errors(),
        }


def cli(argv: list[str]) -> tuple[int, str, str]:
    """Run the CLI in this process; -> (exit status, stdout, stderr). An escaping exception is status -1
    with its traceback as stderr (what a user would have seen)."""
    import traceback

    from counterclip.cli import run

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = run(argv)
        except BaseException:  # noqa: BLE001 - a traceback is a failed run
            traceback.print_exc()
            status = -1
    return status, out.getvalue(), err.getvalue()


def error_lines(stderr: str) -> list[str]:
    """stderr without progress bars."""
    return [line for line in stderr.strip().splitlines() if "━" not in line and line.strip()]


def comparable(command: str, stdout: str) -> Any:
    data = json.loads(stdout)
    if command == "info":
        return {k: data[k] for k in ("images", "captions", "skipped", "fingerprint", "errors")}
    if command == "search":  # the answer, not how long it took
        return [[i["id"], i["path"], round(i["score_after"], 4)] for i in data["items"]]
    return data


# --- one (file, damage) case in a worker process -----------------------------------------------------
def worker(pristine: Path, work: Path, name: str, mode: str, expected_path: Path) -> dict[str, Any]:
    expected = json.loads(expected_path.read_text())
    index_dir = work / "idx"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(pristine, index_dir)
    damage(index_dir / name, mode, seed=hash(name) % 1000)
    outcome: dict[str, Any] = {"file": name, "mode": mode, "commands": {}}

    def judge(command: str, status: int, stdout: str, stderr: str, answer: Any = None) -> str:
        lines = error_lines(stderr)
        if status == 0:
            if command in ("update", "check"):
                return "ok"  # judged below (update: the index after it; check: must have failed)
            return "correct" if answer == expected[command] else "WRONG ANSWER"
        if status == 2 and len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in stderr:
            return "one-line error" + (" naming the file" if name in lines[0] or "manifest" in name else "")
        return f"FAILED (exit {status}): {stderr.strip()[-300:]}"

    try:
        answer = open_answers(index_dir)
        outcome["commands"]["open"] = (
            "correct" if json.loads(json.dumps(answer)) == expected["open"] else "WRONG ANSWER"
        )
    except Exception as exc:  # noqa: BLE001
        from counterclip.errors import CounterclipError

        one_line = isinstance(exc, CounterclipError) and len(str(exc).splitlines()) == 1
        outcome["commands"]["open"] = (
            "one-line error" + (" naming the file" if name in str(exc) else "")
            if one_line
            else f"FAILED: {exc!r}"
        )
    status, stdout, stderr = cli(["search", str(index_dir), "--text", "a red circle", "-k", "5", "--json"])
    outcome["commands"]["search"] = judge(
        "search", status, stdout, stderr, comparable("search", stdout) if status == 0 else None
    )
    probe = search_image_argv(pristine, name)
    status, stdout, stderr = cli(["search", str(index_dir), *probe])
    _, expected_out, _ = cli(["search", str(pristine), *probe])
    expected["search-image"] = comparable("search", expected_out)
    outcome["commands"]["search-image"] = judge(
        "search-image", status, stdout, stderr, comparable("search", stdout) if status == 0 else None
    )
    status, stdout, stderr = cli(["info", str(index_dir), "--json"])
    outcome["commands"]["info"] = judge(
        "info", status, stdout, stderr, comparable("info", stdout) if status == 0 else None
    )
    status, stdout, stderr = cli(["check", str(index_dir), "--json"])
    named = (
        status == 2 and any(d["file"] == name for d in json.loads(stdout)["damaged"])
        if stdout.strip()
        else False
    )
    outcome["commands"]["check"] = (
        "names the file" if named else f"FAILED: exit {status} {stdout[-200:]} {stderr[-200:]}"
    )
    status, stdout, stderr = cli(["update", str(index_dir), "--json"])
    verdict = judge("update", status, stdout, stderr)
    if verdict == "ok":  # an update that succeeds must leave a correct index
        verdict = (
            "correct (restored)"
            if same_index(snapshot(index_dir), load_snapshot(expected_path))
            else "WRONG ANSWER"
        )
    outcome["commands"]["update"] = verdict
    status, stdout, stderr = cli(["update", str(index_dir), "--repair", "--json"])
    repaired = status == 0 and same_index(snapshot(index_dir), load_snapshot(expected_path))
    check_status, _, _ = cli(["check", str(index_dir)])
    outcome["repair"] = (
        "equal to a clean build, check passes"
        if repaired and check_status == 0
        else f"FAILED: exit {status} {stderr[-300:]}"
    )
    return outcome


def search_image_argv(pristine: Path, name: str) -> list[str]:
    """``search --image '#ID'`` for the image in the middle row of a damaged image shard (else the
    middle indexed image)."""
    import sqlite3

    from counterclip.index_builder.manifest import Manifest

    db = pristine / Manifest.read(pristine).db_file
    number = None
    if name.startswith("embeddings/images-") and not name.endswith(".ids.npy"):
        number = int(name.split("-")[1].split(".")[0])
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        query = (
            "SELECT id FROM images WHERE status = 'indexed' AND (shard = ? OR ? IS NULL) ORDER BY shard, row"
        )
        rows = conn.execute(query, (number, number)).fetchall()
    image_id = rows[len(rows) // 2][0]
    return ["--image", f"#{image_id}", "-k", "5", "--json"]


def load_snapshot(expected_path: Path) -> dict[str, Any]:
    data = json.loads(expected_path.read_text())["snapshot"]
    return {
        "images": {p: (v[0], np.asarray(v[1], dtype=np.float32), *v[2:]) for p, v in data["images"].items()},
        "captions": {t: np.asarray(v, dtype=np.float32) for t, v in data["captions"].items()},
        "errors": data["errors"],
        "counts": tuple(data["counts"]),
    }


def dump_snapshot(snap: dict[str, Any]) -> dict[str, Any]:
    return {
        "images": {p: [v[0], v[1].tolist(), *v[2:]] for p, v in snap["images"].items()},
        "captions": {t: v.tolist() for t, v in snap["captions"].items()},
        "errors": snap["errors"],
        "counts": list(snap["counts"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--model", default="bundled:shapes")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--skip-more", action="store_true", help="only the index files (no ONNX, merge, bench)"
    )
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        pristine, work, cases, expected = args.worker
        for name, mode in json.loads(cases):
            print(json.dumps(worker(Path(pristine), Path(work), name, mode, Path(expected))), flush=True)
        return

    from counterclip.index_builder import IndexCfg, build_index
    from counterclip.index_builder.manifest import Manifest, manifest_name

    started = time.time()
    base = Path(tempfile.mkdtemp(prefix="cc-damage-"))
    root = base / "photos"
    root.mkdir()
    for i in range(args.images):
        noise_image(i).save(root / f"img-{i:04d}.jpg", quality=90)
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "img-0003.txt").write_text("three on a sidecar\n")
    vocab = base / "vocab.txt"
    vocab.write_text("a red circle\na blue square\na green triangle\n")
    pristine = base / "pristine"
    cfg = IndexCfg(name="damage", shard_size=args.shard_size, batch_size=32, recall_sample=200)
    build_index(root, pristine, model=args.model, vocab=vocab, device="cpu", progress=False, config=cfg)
    manifest = Manifest.read(pristine)
    files = sorted(manifest.files) + ["manifest.json", manifest_name(manifest.generation)]

    expected: dict[str, Any] = {
        "open": json.loads(json.dumps(open_answers(pristine))),
        "snapshot": dump_snapshot(snapshot(pristine)),
    }
    for command, argv in (
        ("search", ["search", str(pristine), "--text", "a red circle", "-k", "5", "--json"]),
        ("info", ["info", str(pristine), "--json"]),
    ):
        status, stdout, stderr = cli(argv)
        if status != 0:
            raise SystemExit(f"{command} fails on the pristine index: {stderr}")
        expected[command] = comparable(command, stdout)
    expected_path = base / "expected.json"
    expected_path.write_text(json.dumps(expected))
    print(f"pristine index: {len(files)} files ({time.time() - started:.0f} s)", file=sys.stderr)

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    outcomes: list[dict[str, Any]] = []
    cases = [(name, mode) for name in files for mode in MODES]
    while len(outcomes) < len(cases):
        todo = cases[len(outcomes) :]
        proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                str(pristine),
                str(base / "work"),
                json.dumps(todo),
                str(expected_path),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for line in proc.stdout:
            if not line.startswith("{"):
                continue
            outcome = json.loads(line)
            outcomes.append(outcome)
            verdicts = " | ".join(f"{c}: {outcome['commands'][c]}" for c in COMMANDS)
            print(
                f"{outcome['file']:34s} {outcome['mode']:9s} {verdicts} | repair: {outcome['repair']}",
                file=sys.stderr,
            )
        proc.wait()
        if proc.returncode != 0 and len(outcomes) < len(cases):  # the worker died on the next case
            name, mode = cases[len(outcomes)]
            crash = f"CRASH (exit {proc.returncode}): {proc.stderr.read()[-3000:]}"
            outcomes.append(
                {"file": name, "mode": mode, "commands": dict.fromkeys(COMMANDS, crash), "repair": crash}
            )

    table: dict[str, dict[str, int]] = {c: {} for c in COMMANDS}
    for outcome in outcomes:
        for command in COMMANDS:
            verdict = outcome["commands"][command]
            key = (
                verdict
                if verdict.split(" (")[0] in ("correct", "names the file")
                or verdict.startswith("one-line error")
                else "FAILED"
            )
            table[command][key] = table[command].get(key, 0) + 1
    silent = sum(1 for o in outcomes for v in o["commands"].values() if v.startswith("WRONG"))
    failed = sum(
        1 for o in outcomes for v in o["commands"].values() if v.startswith(("FAILED", "CRASH", "WRONG"))
    )
    repaired = sum(1 for o in outcomes if o["repair"].startswith("equal"))
    report = {
        "files": files,
        "cases": len(outcomes),
        "runs": len(outcomes) * len(COMMANDS),
        "by_command": table,
        "silent_wrong_answers": silent,
        "failed_runs": failed,
        "check_named_the_file": table["check"].get("names the file", 0),
        "repaired_equal_to_clean_build": repaired,
        "seconds": round(time.time() - started, 1),
        "failures": [
            o
            for o in outcomes
            if any(v.startswith(("FAILED", "CRASH", "WRONG")) for v in o["commands"].values())
            or not o["repair"].startswith("equal")
        ],
    }
    if not args.skip_more:
        report["onnx_cache"] = onnx_battery(pristine, root, cli)
        report["merge_parts"] = merge_battery(root, cli)
        report["shard_read_cost"] = bench_reads()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"{len(files)} files x {len(MODES)} damages = {report['cases']} cases, {report['runs']} command runs ({report['seconds']} s)"
        )
        for command in COMMANDS:
            print(f"  {command:7s} " + ", ".join(f"{v} {k}" for k, v in sorted(table[command].items())))
        print(f"silent wrong answers            {silent}")
        print(f"runs with a traceback / other   {failed - silent}")
        print(f"check named the damaged file    {report['check_named_the_file']}/{report['cases']}")
        print(f"update --repair == clean build  {repaired}/{report['cases']}")
        for section in ("onnx_cache", "merge_parts"):
            if section in report:
                part = report[section]
                good = part.get("correct", part.get("refused"))
                print(f"{section}: {good}/{part['cases']} as they should be")
                for o in part["outcomes"]:
                    print(f"  {o['case']:40s} {o['verdict']}")
        if "shard_read_cost" in report:
            print(f"shard read cost (median us per shard): {json.dumps(report['shard_read_cost'])}")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
