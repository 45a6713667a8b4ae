"""Shared CLI plumbing: the user-facing error type, consoles, JSON output and progress bars."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console

from counterclip.errors import CounterclipError

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


class CliError(CounterclipError):
    """An error the user can fix: printed as one line, exit status 2 (no traceback unless --debug)."""


def say(text: str) -> None:
    """A line of prose on stdout (rich markup), wrapped at word boundaries to the terminal's width."""
    out.print(text, highlight=False, soft_wrap=False)


def print_json(payload: Any) -> None:
    """Print JSON to stdout (machine-readable; never mixed with rich markup)."""
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    sys.stdout.flush()


@contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr with elapsed time and an ETA, for work of known size.

    Yields ``advance(done, total)``; the bar appears on the first call (nothing is drawn for work that
    reports no progress, or when stderr is not a terminal).

    Examples::

        with progress_bar("evaluating") as advance:
            run(progress=advance)
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not enabled or not console.is_terminal,
    )
    task = None

    def advance(done: int, total: int) -> None:
        nonlocal task
        if task is None:
            task = bar.add_task(description, total=total)
        bar.update(task, completed=done, total=total)

    with bar:
        yield advance


@contextmanager
def working(description: str, enabled: bool = True) -> Iterator[None]:
    """A spinner with the elapsed time on stderr, for one long step whose size is not known."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    spinner = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not enabled or not console.is_terminal,
    )
    with spinner:
        spinner.add_task(description, total=None)
        yield


def metrics_table(title: str, columns: dict[str, dict[str, Any]], rows: list[str], digits: int = 3) -> Any:
    """A table with one row per metric (its full name) and one column per method, so it fits a terminal
    of 80 columns (method names wrap at word boundaries instead of being cut)."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("", no_wrap=True)
    for name in columns:
        table.add_column(name.replace("_", " "), justify="right", overflow="fold")
    for row in rows:
        cells = []
        for figures in columns.values():
            value = figures.get(row)
            cells.append(
                "-" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))
            )
        table.add_row(row.replace("_", " "), *cells)
    return table
