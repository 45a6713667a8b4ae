"""kill -9 at random moments during a build and during an update, then run it again. Prints, for each,
how many of the killed runs left: an incomplete first build (never opened as valid) or, for updates,
the previous generation readable and unchanged (or the new one, when the kill came after the switch);
and how many resumed to an index equal to a clean build with no file left over.

The moments are drawn uniformly over the duration of an unkilled run of the same work (the longer of
two measured first: this machine's speed varies several-fold with its load), in a child process that has already loaded its model, so the kills land in the
work, not in imports; a draw that lands after the run finished (this machine's speed varies) is drawn
again on a fresh copy, so every counted run was really killed.

Usage (from the repository root)::

    python scripts/check_crash.py                 # 20 kills during a build, 20 during an update
    python scripts/check_crash.py --kills 5 --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the checkout this script lives in
from _index_checks import noise_image, same, snapshot  # noqa: E402 - beside this script


def config():  # noqa: ANN201
    from counterclip.index_builder import IndexCfg

    return IndexCfg(name="crash", shard_size=16, batch_size=8, recall_sample=200)


def child(op: str, index_dir: str, root: str, vocab: str, model_spec: str) -> None:
    """Load the model, say ready, wait for "go", run the build or update, say finished."""
    from counterclip.index_builder import build_index, update_index
    from counterclip.models import load_model

    model = load_model(model_spec, device="cpu")
    model.fingerprint  # noqa: B018 - computed now, not during the run
    print("ready", flush=True)
    sys.stdin.readline()
    if op == "build":
        build_index(root, index_dir, model=model, vocab=vocab, progress=False, config=config())
    else:
        update_index(index_dir, model=model, progress=False)
    print("finished", flush=True)


def start_child(op: str, index_dir: Path, root: Path, vocab: Path, model_spec: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", op, str(index_dir), str(root), str(vocab), model_spec],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def leftovers(index_dir: Path) -> list[str]:
    """Files that the current generation does not list (besides locks and manifests)."""
    from counterclip.index_builder.manifest import Manifest, manifest_name

    manifest = Manifest.read(index_dir)
    on_disk = {p.relative_to(index_dir).as_posix() for p in index_dir.rglob("*") if p.is_file()}
    on_disk -= {".lock", ".gc.lock", "manifest.json", manifest_name(manifest.generation)}
    return sorted(on_disk - set(manifest.files))


def timed_run(op: str, index_dir: Path, root: Path, vocab: Path, model_spec: str) -> float:
    proc = start_child(op, index_dir, root, vocab, model_spec)
    started = time.perf_counter()
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "finished"
    seconds = time.perf_counter() - started
    proc.wait()
    return seconds


def kill_at(op: str, index_dir: Path, root: Path, vocab: Path, model_spec: str, delay: float) -> bool:
    """Start the run, SIGKILL it after ``delay`` seconds; True when it was killed (not finished first)."""
    proc = start_child(op, index_dir, root, vocab, model_spec)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate()
    return "finished" not in out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--model", default="bundled:shapes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    from counterclip.errors import IndexFormatError
    from counterclip.index_builder import build_index, update_index
    from counterclip.models import load_model

    started = time.time()
    rng = np.random.default_rng(args.seed)
    base = Path(tempfile.mkdtemp(prefix="cc-crash-"))
    model = load_model(args.model, device="cpu")
    root = base / "photos"
    root.mkdir()
    for i in range(args.images):
        noise_image(i).save(root / f"img-{i:04d}.jpg", quality=90)
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "img-0005.txt").write_text("five on a sidecar\n")
    vocab = base / "vocab.txt"
    vocab.write_text("a red circle\na blue square\n")
    clean = base / "clean"
    build_index(root, clean, model=model, vocab=vocab, progress=False, config=config())
    expected = snapshot(clean)

    report: dict[str, Any] = {}
    # --- builds
    build_seconds = max(timed_run("build", base / f"timed-{i}", root, vocab, args.model) for i in range(2))
    build = {
        "killed": 0,
        "finished_first": 0,
        "incomplete_after_kill": 0,
        "complete_after_kill": 0,
        "other_after_kill": 0,
        "resumed_equal": 0,
        "leftover_files": 0,
        "seconds_of_a_run": round(build_seconds, 2),
    }
    for trial in range(args.kills):
        index_dir = base / f"build-{trial}"
        while not kill_at("build", index_dir, root, vocab, args.model, float(rng.uniform(0, build_seconds))):
            build["finished_first"] += 1  # drawn after the end: draw again on a fresh directory
            shutil.rmtree(index_dir)
        build["killed"] += 1
        try:
            state = "complete_after_kill" if same(snapshot(index_dir), expected, True) else "other_after_kill"
        except IndexFormatError as exc:
            state = (
                "incomplete_after_kill"
                if "incomplete" in str(exc) or "not a counterclip index" in str(exc)
                else "other_after_kill"
            )
        build[state] += 1
        build_index(root, index_dir, model=model, vocab=vocab, progress=False, config=config())
        build["resumed_equal"] += same(snapshot(index_dir), expected, True)
        build["leftover_files"] += len(leftovers(index_dir))
        shutil.rmtree(index_dir)
        print(f"build  kill {trial + 1:2d}: {state}", file=sys.stderr)
    report["build"] = build

    # --- updates: generation 1 of a folder, then 20 added, 5 changed, 5 deleted
    update_root = base / "photos2"
    shutil.copytree(root, update_root)
    pristine = base / "pristine"
    build_index(update_root, pristine, model=model, vocab=vocab, progress=False, config=config())
    before = snapshot(pristine)
    for i in range(20):
        noise_image(5000 + i).save(update_root / f"new-{i:03d}.jpg", quality=90)
    for i in range(5):
        noise_image(6000 + i).save(update_root / f"img-{10 + i:04d}.jpg", quality=90)
        (update_root / f"img-{40 + i:04d}.jpg").unlink()
    clean2 = base / "clean2"
    build_index(update_root, clean2, model=model, vocab=vocab, progress=False, config=config())
    after = snapshot(clean2)
    update_seconds = 0.0
    for i in range(2):
        timed = base / f"timed-update-{i}"
        shutil.copytree(pristine, timed)
        update_seconds = max(update_seconds, timed_run("update", timed, update_root, vocab, args.model))
    update = {
        "killed": 0,
        "finished_first": 0,
        "old_generation_intact": 0,
        "new_generation_complete": 0,
        "other_after_kill": 0,
        "resumed_equal": 0,
        "leftover_files": 0,
        "seconds_of_a_run": round(update_seconds, 2),
    }
    for trial in range(args.kills):
        index_dir = base / f"update-{trial}"
        shutil.copytree(pristine, index_dir)
        while not kill_at(
            "update", index_dir, update_root, vocab, args.model, float(rng.uniform(0, update_seconds))
        ):
            update["finished_first"] += 1  # drawn after the end: draw again on a fresh copy
            shutil.rmtree(index_dir)
            shutil.copytree(pristine, index_dir)
        update["killed"] += 1
        try:
            now = snapshot(index_dir)
            if now["generation"] == 1 and same(now, before, True):
                state = "old_generation_intact"
            elif now["generation"] == 2 and same(now, after, False):
                state = "new_generation_complete"
            else:
                state = "other_after_kill"
        except Exception as exc:  # noqa: BLE001 - an unreadable index after a kill is a failure
            state = "other_after_kill"
            print(f"   unreadable: {exc}", file=sys.stderr)
        update[state] += 1
        update_index(index_dir, model=model, progress=False)
        update["resumed_equal"] += same(snapshot(index_dir), after, False)
        update["leftover_files"] += len(leftovers(index_dir))
        shutil.rmtree(index_dir)
        print(f"update kill {trial + 1:2d}: {state}", file=sys.stderr)
    report["update"] = update
    report["seconds"] = round(time.time() - started, 1)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        b, u = report["build"], report["update"]
        print(
            f"build : {b['killed']} kills over a {b['seconds_of_a_run']} s run ({b['finished_first']} draws redrawn); "
            f"after the kill: {b['incomplete_after_kill']} incomplete (refused), {b['complete_after_kill']} complete, "
            f"{b['other_after_kill']} other; resumed equal to a clean build {b['resumed_equal']}/{b['killed']}; "
            f"leftover files {b['leftover_files']}"
        )
        print(
            f"update: {u['killed']} kills over a {u['seconds_of_a_run']} s run ({u['finished_first']} draws redrawn); "
            f"after the kill: {u['old_generation_intact']} old generation intact, {u['new_generation_complete']} "
            f"new generation complete, {u['other_after_kill']} other; resumed equal to a clean build "
            f"{u['resumed_equal']}/{u['killed']}; leftover files {u['leftover_files']}"
        )
        print(f"({report['seconds']} s)")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
