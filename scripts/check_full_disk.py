"""Full disks: builds and updates on a small tmpfs that runs out of space. Prints, per run, the exit
status, whether the error is one line naming the index (no traceback), whether the generation readers
use stayed readable and unchanged (updates), and whether the same command resumed, once space was
freed, to an index equal to a clean build.

Needs root (``mount -t tmpfs``); without it, or where mounting fails, it prints why and exits 0.

Usage (from the repository root)::

    python scripts/check_full_disk.py           # 5 builds, 5 updates, bundled model, 120 images
    python scripts/check_full_disk.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the checkout this script lives in
from _index_checks import noise_image, same, snapshot  # noqa: E402 - beside this script

BUILD_SIZES = ("64k", "128k", "256k", "384k", "512k")  # tmpfs sizes for the builds
UPDATE_FREE_KB = (24, 64, 128, 256, 384)  # space left free before each update


def cli(*argv: str) -> tuple[int, list[str], str]:
    """``python -m counterclip ARGV`` -> (exit status, stderr lines that are not progress bars, stderr)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "counterclip", *argv], env=env, capture_output=True, text=True
    )
    lines = [
        line
        for line in done.stderr.splitlines()
        if line.strip() and "━" not in line and "WARNING" not in line
    ]
    return done.returncode, lines, done.stderr


def mount(directory: Path, options: str) -> None:
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], check=True, capture_output=True
    )


def umount(directory: Path) -> None:
    subprocess.run(["umount", "-l", str(directory)], check=False, capture_output=True)


def remount(directory: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(directory)], check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--model", default="bundled:shapes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="cc-fulldisk-"))
    disk = base / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        print("skipped: mounting a small tmpfs needs root")
        return
    try:
        mount(disk, "size=64k")
        umount(disk)
    except subprocess.CalledProcessError as exc:
        print(f"skipped: cannot mount a tmpfs here ({exc.stderr.decode().strip()})")
        return

    from counterclip.index_builder import build_index

    started = time.time()
    root = base / "photos"
    root.mkdir()
    for i in range(args.images):
        noise_image(i).save(root / f"img-{i:04d}.jpg", quality=90)
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    clean = base / "clean"
    build_index(root, clean, model=args.model, device="cpu", progress=False)
    expected = snapshot(clean)
    runs: list[dict[str, Any]] = []

    for size in BUILD_SIZES:
        mount(disk, f"size={size}")
        try:
            index_dir = disk / "idx"
            argv = (
                "build",
                str(root),
                "--index",
                str(index_dir),
                "--model",
                args.model,
                "--device",
                "cpu",
                "--json",
            )
            status, lines, stderr = cli(*argv)
            run: dict[str, Any] = {"kind": "build", "tmpfs": size, "exit": status}
            if status == 0:
                run["outcome"] = "fits (no full disk)"
            else:
                run["one_line"] = (
                    len(lines) == 1
                    and lines[0].startswith("error: disk full: index")
                    and "Traceback" not in stderr
                )
                run["message"] = lines[-1] if lines else stderr[-300:]
                remount(disk, "size=64m")
                status, lines, stderr = cli(*argv)
                run["resumed_exit"] = status
                run["equal_to_clean_build"] = status == 0 and same(snapshot(index_dir), expected)
            runs.append(run)
        finally:
            umount(disk)

    # updates: generation 1 built, 40 files added, then an update with little space left
    update_root = base / "photos2"
    shutil.copytree(root, update_root)
    pristine = base / "pristine"
    build_index(update_root, pristine, model=args.model, device="cpu", progress=False)
    before = snapshot(pristine)
    for i in range(40):
        noise_image(5000 + i).save(update_root / f"new-{i:03d}.jpg", quality=90)
    clean2 = base / "clean2"
    build_index(update_root, clean2, model=args.model, device="cpu", progress=False)
    expected2 = snapshot(clean2)
    for free_kb in UPDATE_FREE_KB:
        mount(disk, "size=8m")
        try:
            index_dir = disk / "idx"
            shutil.copytree(pristine, index_dir)
            filler = disk / "filler"
            filler.write_bytes(b"\0" * max(shutil.disk_usage(disk).free - free_kb * 1024, 0))
            status, lines, stderr = cli("update", str(index_dir), "--json")
            run = {"kind": "update", "free_kb": free_kb, "exit": status}
            if status == 0:
                run["outcome"] = "fits (no full disk)"
            else:
                run["one_line"] = (
                    len(lines) == 1
                    and lines[0].startswith("error: disk full: index")
                    and "Traceback" not in stderr
                )
                run["message"] = lines[-1] if lines else stderr[-300:]
                run["generation_1_readable_and_unchanged"] = same(snapshot(index_dir), before)
                filler.unlink()
                status, lines, stderr = cli("update", str(index_dir), "--json")
                run["resumed_exit"] = status
                run["equal_to_clean_build"] = status == 0 and same(
                    snapshot(index_dir), expected2, same_ids=False
                )
            runs.append(run)
        finally:
            umount(disk)

    full = [r for r in runs if r["exit"] != 0]
    report = {
        "runs": runs,
        "full_disk_runs": len(full),
        "one_line_errors": sum(1 for r in full if r.get("one_line")),
        "resumed_equal_to_clean_build": sum(1 for r in full if r.get("equal_to_clean_build")),
        "updates_left_generation_readable": sum(
            1 for r in full if r.get("generation_1_readable_and_unchanged")
        ),
        "full_disk_updates": sum(1 for r in full if r["kind"] == "update"),
        "seconds": round(time.time() - started, 1),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for r in runs:
            where = f"tmpfs {r['tmpfs']}" if r["kind"] == "build" else f"{r['free_kb']} kB free"
            if r["exit"] == 0:
                print(f"{r['kind']:6s} {where:14s} {r['outcome']}")
                continue
            extra = (
                f", generation 1 readable and unchanged: {r['generation_1_readable_and_unchanged']}"
                if r["kind"] == "update"
                else ""
            )
            print(
                f"{r['kind']:6s} {where:14s} exit {r['exit']}, one line: {r['one_line']}{extra}, "
                f"resumed: exit {r['resumed_exit']}, equal to a clean build: {r['equal_to_clean_build']}"
            )
            print(f"       {r['message'][:220]}")
        print(
            f"full-disk runs {report['full_disk_runs']}: one-line errors {report['one_line_errors']}, "
            f"resumed equal to a clean build {report['resumed_equal_to_clean_build']}, updates that left "
            f"generation 1 readable {report['updates_left_generation_readable']}/{report['full_disk_updates']} "
            f"({report['seconds']} s)"
        )
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
