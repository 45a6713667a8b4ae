"""The progress display of a build, an update or an import: a rich progress bar on stderr, or nothing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Progress:
    """A rich progress display on stderr, or nothing (``enabled=False``); a context manager."""

    def __init__(self, enabled: bool) -> None:
        self._progress = None
        if enabled:
            self._progress = _rich_progress()

    def __enter__(self) -> Progress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def task(self, description: str, total: int | None, unit: str = "it") -> Any:
        """A new line on the display (None when disabled); ``total`` None: a spinner without a bar."""
        if self._progress is None:
            return None
        return self._progress.add_task(description, total=total, unit=unit)

    def advance(self, task: Any, n: int = 1) -> None:
        """``n`` more units of ``task`` done."""
        if self._progress is not None and task is not None:
            self._progress.advance(task, n)

    def done(self, task: Any) -> None:
        """Mark ``task`` complete (a spinner becomes a full bar)."""
        if self._progress is not None and task is not None:
            total = max(next(t.completed for t in self._progress.tasks if t.id == task), 1)
            self._progress.update(task, total=total, completed=total)

    @contextmanager
    def step(self, description: str) -> Iterator[None]:
        """A spinner line for one step of unknown length (loading the model), complete when it ends."""
        task = self.task(description, None, "step")
        try:
            yield
        except BaseException:
            if self._progress is not None and task is not None:
                self._progress.remove_task(task)  # the error says what happened; no line left behind
            raise
        self.done(task)


def _rich_progress() -> Any:
    """The rich `Progress` with a rate column (imported here: a build without progress never imports rich)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        ProgressColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as RichProgress
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            unit = task.fields.get("unit", "it")
            return Text(f"{speed:.1f} {unit}/s" if speed else "", style="progress.data.speed")

    return RichProgress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )
