"""The command line: help, version, error paths (one line, exit status 2, traceback only with --debug)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from counterclip import __version__
from counterclip.cli import run
from counterclip.errors import ModelLoadError

COMMANDS = (
    "build",
    "update",
    "info",
    "search",
    "counterfactual",
    "explain",
    "serve",
    "demo",
    "eval",
    "models",
)


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--help"]) == 0
    text = capsys.readouterr().out
    for command in COMMANDS:
        assert command in text


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for command in COMMANDS:
        assert run([command, "--help"]) == 0, command
        assert "Usage" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"counterclip {__version__}"


def test_unknown_architecture_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["models", "ViT-Q-99"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown open_clip architecture 'ViT-Q-99'")
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_debug_shows_the_exception() -> None:
    with pytest.raises(ModelLoadError):
        run(["--debug", "models", "ViT-Q-99"])


def test_usage_error_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["models", "--no-such-flag"]) == 2


def test_models_json_describes_a_model(tiny_openclip: str, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert run(["models", tiny_openclip, "--device", "cpu", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["embed_dim"] == 32 and payload["grid_size"] == [4, 4]
    assert payload["spec_string"] == tiny_openclip and len(payload["fingerprint"]) == 32


def test_console_script_exit_status() -> None:
    """The installed entry point maps a user error to exit status 2 and prints no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "counterclip", "models", "bundled:nothing"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "no bundled model named 'nothing'" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_lets_openmp_wait_without_spinning() -> None:
    """The command sets OMP_WAIT_POLICY=PASSIVE before torch or faiss loads OpenMP; a user's value wins."""
    import os
    import subprocess
    import sys

    code = "import counterclip.cli, os, sys; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["PASSIVE", "False"]
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == "ACTIVE"
