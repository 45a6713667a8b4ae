"""Shared CLI plumbing: the user-facing error type, console, and JSON output."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

from counterclip.errors import CounterclipError

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


class CliError(CounterclipError):
    """An error the user can fix: printed as one line, exit status 2 (no traceback unless --debug)."""


def print_json(payload: Any) -> None:
    """Print JSON to stdout (machine-readable; never mixed with rich markup)."""
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    sys.stdout.flush()
