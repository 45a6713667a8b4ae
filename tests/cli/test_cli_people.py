"""The CLI as people meet it: feedback at once on the terminal ("loading model ..." with a spinner,
quiet with --json), `serve` that checks its port before loading and prints the address only once it
listens, flip's chosen target said, reports that always show the original (a path as typed, an index id;
the demo's text-side report with maps), and the smaller wording fixes (shapes generate's default seed, a
build's skipped files counted apart, info naming the bundled calibration, eval's passed-over queries).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import re
import select
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from counterclip.cli import run

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """40 shapes images (with sidecar captions) indexed with the bundled model and the shapes vocabulary."""
    from counterclip.index_builder import build_index
    from counterclip.shapes import generate_folder
    from counterclip.shapes import vocabulary as shapes_vocabulary

    base = tmp_path_factory.mktemp("people-cli")
    generate_folder(base / "shapes", n=40, seed=3)
    vocab = base / "vocab.txt"
    vocab.write_text("\n".join(shapes_vocabulary()) + "\n", encoding="utf-8")
    build_index(
        base / "shapes", base / "idx", model="bundled:shapes", vocab=vocab, device="cpu", progress=False
    )
    return base / "shapes", base / "idx"


def _environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _on_a_terminal(args: list[str], timeout: float = 120) -> str:
    """Run ``counterclip ARGS`` with stdout and stderr on a pseudo-terminal; everything it wrote."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI itself
        os.chdir(REPO)
        os.execve(sys.executable, [sys.executable, "-m", "counterclip", *args], _environment())
    written = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        written += chunk
    os.waitpid(pid, 0)
    return written.decode("utf-8", errors="replace")


def test_a_query_says_loading_model_before_anything_else(site) -> None:
    _, index = site
    shown = _on_a_terminal(["search", str(index), "--text", "a red circle", "-k", "2", "--device", "cpu"])
    first = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown).lstrip("\r\n ")
    assert "loading model" in first.splitlines()[0], first[:200]  # the spinner's line comes first
    assert shown.index("loading model") < shown.index("a red circle")
    quiet = _on_a_terminal(
        ["search", str(index), "--text", "a red circle", "-k", "2", "--device", "cpu", "--json"]
    )
    assert "loading model" not in quiet and json.loads(quiet)["items"]  # --json: JSON only


def test_serve_refuses_a_taken_port_in_one_line_before_loading(site) -> None:
    _, index = site
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "counterclip", "serve", str(index), "--port", str(port)],
            cwd=REPO,
            env=_environment(),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"error: port {port} on 127.0.0.1 is taken by another program; stop it, or serve on another port "
        f"with --port {port + 1}"
    ]


def test_serve_prints_the_address_once_it_listens(site) -> None:
    _, index = site
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "counterclip",
        "serve",
        str(index),
        "--port",
        str(port),
        "--device",
        "cpu",
    ]
    process = subprocess.Popen(command, cwd=REPO, env=_environment(), stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in process.stderr:
            lines.append(line)
            if "open http://" in line:
                break
        assert lines and f"open http://127.0.0.1:{port}/" in lines[-1], "".join(lines)
        # the address is printed once the server answers: the first call needs no retry
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as response:
            assert json.loads(response.read())["status"] == "ok"
    finally:
        process.terminate()
        process.wait(30)


def _cli(args: list[str]) -> tuple[int, str]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = run(args)
    return code, buffer.getvalue()


def test_flip_without_a_target_says_which_it_took(site, capsys) -> None:
    _, index = site
    args = ["counterfactual", str(index), "--image", "#5", "--mode", "flip", "--labels"]
    args += ["a red shape,a green shape,a blue shape,a yellow shape", "-k", "2", "--device", "cpu"]
    code, text = _cli([*args, "--json"])
    assert code == 0
    query = json.loads(text)["query"]
    assert query["target_chosen"] and query["target"] != query["predicted"]
    code, shown = _cli(args)
    assert code == 0
    flat = " ".join(shown.split())
    assert f"No target label was given: the target is \u201c{query['target']}\u201d" in flat
    assert "class prob." in shown and "class probability: softmax over the given labels" in flat


def test_every_report_shows_the_original(site, tmp_path, monkeypatch) -> None:
    folder, index = site
    monkeypatch.chdir(folder.parent)  # the image as a user types it: relative to where they are
    relative = Path(folder.name) / "000003.png"
    for image, name in ((str(relative), "by-path"), ("#4", "by-id")):
        report = tmp_path / f"{name}.html"
        args = ["counterfactual", str(index), "--image", image, "--text", "a red circle", "-k", "2"]
        code, _ = _cli(
            [*args, "--side", "text", "--mode", "decrease", "--device", "cpu", "--report", str(report)]
        )
        assert code == 0
        html = report.read_text(encoding="utf-8")
        assert 'alt="the query image"' in html and "could not be read" not in html
        assert 'class="cc-tiles"' in html  # the text side's maps are drawn over the original


def test_the_demo_reports_both_carry_the_original_and_maps(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert run(["demo", "--out", "demo-out", "--n", "40", "--device", "cpu"]) == 0  # a relative --out
    for name in ("report-image-side.html", "report-text-side.html"):
        html = (tmp_path / "demo-out" / name).read_text(encoding="utf-8")
        assert 'alt="the query image"' in html and "could not be read" not in html
        assert html.count('class="cc-map') >= 2, name  # the query's map and the answers' maps


def test_shapes_generate_has_a_default_seed(tmp_path) -> None:
    assert run(["shapes", "generate", str(tmp_path / "a"), "--n", "3"]) == 0
    assert run(["shapes", "generate", str(tmp_path / "b"), "--n", "3", "--seed", "0"]) == 0
    assert (tmp_path / "a" / "000000.png").read_bytes() == (tmp_path / "b" / "000000.png").read_bytes()


def test_a_build_counts_skipped_files_apart(tmp_path) -> None:
    from counterclip.shapes import generate_folder

    generate_folder(tmp_path / "photos", n=3, seed=1)
    (tmp_path / "photos" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a picture")
    code, shown = _cli(
        ["build", str(tmp_path / "photos"), "--index", str(tmp_path / "idx"), "--device", "cpu"]
    )
    assert code == 0
    assert "4 new, 0 changed, 0 removed, 0 unchanged files: 3 embedded, 1 skipped" in shown
    assert "3 indexed, 1 skipped (could not be read; listed below)" in shown
    code, shown = _cli(["info", str(tmp_path / "idx")])
    assert "last run   4 new, 0 changed, 0 removed files: 3 embedded, 1 skipped" in shown


def test_info_names_the_bundled_calibration(site) -> None:
    _, index = site
    code, shown = _cli(["info", str(index)])
    assert code == 0
    line = next(line for line in shown.splitlines() if line.startswith("calibrated "))
    assert (
        line.startswith("calibrated model calibration (shapes world")
        and "shipped with bundled:shapes" in line
    )


def test_eval_counterfactual_says_what_was_passed_over(capsys) -> None:
    from counterclip.cli.query_printers import print_counterfactual_evaluation

    method = {"answered_rate": 1.0, "hit_at_1": 0.9}
    print_counterfactual_evaluation(
        {"image_side": {"drawn": 20, "skipped_no_minimal_answer": 19, "ours": method}}
    )
    flat = " ".join(capsys.readouterr().out.split())
    assert (
        "image side: 20 queries measured (19 more drawn and passed over: the index holds no one-change"
        in flat
    )
    assert "(19 skipped)" not in flat
