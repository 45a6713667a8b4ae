"""A long-running reader of an index that follows its generations.

An `Index` pins one generation until it is closed; an update publishes the next one beside it. The
engine (and the server on top of it) must move on without a restart and without a query ever mixing
two generations. `LiveIndex` does that:

- a query *pins* the current generation for its whole length (`LiveIndex.pinned`, per thread,
  re-entrant), so every id, vector and caption it reads comes from one generation;
- at the start of each pin one ``stat`` tells whether an update published a newer generation; if so
  one thread opens it while the others keep answering from the old one, then new pins use the new one;
- the old generation is closed (its files become collectable) when its last pinned query ends.

What the engine derives from a generation (vector samples, calibrations, caption words) lives with the
generation (`Generation.cache`), so a new generation starts with fresh statistics.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

LOG = logging.getLogger(__name__)


class Generation:
    """One opened generation of an index, the queries using it, and what was derived from it."""

    def __init__(self, index: Any) -> None:
        self.index = index
        self.cache: dict[str, Any] = {}
        self.users = 0
        self.retired = False

    @property
    def number(self) -> int | None:
        return getattr(self.index, "generation", None)


class LiveIndex:
    """The current generation of an index for a long-running reader (see the module docstring).

    Args:
        index: an opened `counterclip.index_builder.Index` (or any index-like object; one without
            ``newer_generation`` / ``reopen`` is simply never refreshed).
    """

    def __init__(self, index: Any) -> None:
        self._current = Generation(index)
        self._lock = threading.Lock()  # guards _current and the users / retired counts
        self._switching = threading.Lock()  # one thread opens a new generation at a time
        self._local = threading.local()
        self._failed: int | None = None  # a generation that would not open (not retried)
        self._closed = False

    @property
    def generation(self) -> Generation:
        """The generation this thread's query pinned, else the current one."""
        pinned = getattr(self._local, "generation", None)
        return pinned if pinned is not None else self._current

    @property
    def index(self) -> Any:
        return self.generation.index

    @contextmanager
    def pinned(self) -> Iterator[Any]:
        """Pin one generation for the enclosed work (re-entrant); yields its index."""
        held = getattr(self._local, "generation", None)
        if held is not None:
            yield held.index
            return
        self.refresh()
        with self._lock:
            generation = self._current
            generation.users += 1
        self._local.generation = generation
        try:
            yield generation.index
        finally:
            self._local.generation = None
            self._release(generation)

    def refresh(self, wait: bool = False) -> bool:
        """Switch to a newer generation if an update published one (one ``stat`` when none did).

        Args:
            wait: when another thread is opening the new generation, wait for it (an explicit refresh,
                ``/health``) instead of going on with the current one (a query: never held up).

        Returns whether the current generation is a new one. A newer generation that fails to open (for
        example rebuilt with another model, or damaged) is logged once and the old one keeps serving.
        """
        current = self._current
        newer = getattr(current.index, "newer_generation", None)
        if self._closed or newer is None:
            return False
        number = newer()
        if number is None or number == self._failed:
            return False
        if not self._switching.acquire(blocking=wait):
            return False  # another thread is opening it; this query uses the one it has
        try:
            if self._current is not current:
                return True
            try:
                fresh = current.index.reopen()
            except Exception as exc:  # noqa: BLE001 - keep serving the generation that works
                self._failed = number
                LOG.warning(
                    "index %s: generation %s could not be opened, still answering from generation %s: %s",
                    getattr(current.index, "path", "?"),
                    number,
                    current.number,
                    exc,
                )
                return False
            with self._lock:
                self._current = Generation(fresh)
                current.retired = True
                close_now = current.users == 0
            LOG.info(
                "index %s: now answering from generation %s", getattr(fresh, "path", "?"), fresh.generation
            )
            if close_now:
                _close(current.index)
            return True
        finally:
            self._switching.release()

    def _release(self, generation: Generation) -> None:
        with self._lock:
            generation.users -= 1
            close_now = generation.retired and generation.users == 0
        if close_now:
            _close(generation.index)

    def close(self) -> None:
        """Close the current generation (retired ones close when their last query ends)."""
        with self._lock:
            self._closed = True
            current = self._current
            current.retired = True
            close_now = current.users == 0
        if close_now:
            _close(current.index)


def _close(index: Any) -> None:
    close = getattr(index, "close", None)
    if close is not None:
        close()


def one_generation(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a method of an object with a ``pinned()`` context on one index generation from start to end
    (`counterclip.engine.Engine` queries, the server's requests)."""

    @functools.wraps(method)
    def pinned(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self.pinned():
            return method(self, *args, **kwargs)

    return pinned
