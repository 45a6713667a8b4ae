"""A bounded worker pool for engine calls: N threads, T torch/FAISS threads each, a bounded wait list.

On a machine with C cores, N workers with C // N threads each keep the cores busy without
oversubscribing them (N workers each asking torch for C threads makes every query wait on the others).
A request that finds the pool full is refused at once (`ServerBusy`: 503 + Retry-After) instead of
joining a queue whose latency grows without limit. Full means: N running and Q waiting with a fixed
queue Q; with the automatic queue (``queue=None``), N running and as much work waiting as the workers
serve in ``max_wait`` seconds (each kind of call's duration measured as the server runs), at most
`AUTO_QUEUE_MAX` calls.

A request takes its place before its body is read (`admit`, by the admission guard) and holds it until
its response is sent (`leave`); calls made within it (`run`) use that place.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

LOG = logging.getLogger(__name__)
T = TypeVar("T")

AUTO_QUEUE_MAX = 64  # calls waiting at most with the automatic queue
FIRST_GUESS_SECONDS = 0.25  # a kind of call's duration until one has been measured
EWMA_WEIGHT = 0.2  # weight of the newest duration in a kind's running mean

_SLOT: contextvars.ContextVar[Slot | None] = contextvars.ContextVar("counterclip_slot", default=None)


class ServerBusy(Exception):
    """Every worker is busy and the queue is full."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the server is busy (all workers busy, queue full); retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass
class Slot:
    """A place in the pool: the kind of call it is for and the seconds of work it was expected to bring."""

    kind: str
    expected: float
    seconds: float = 0.0  # measured time on a worker


def _limit_threads(threads: int) -> None:
    """Runs once in each worker thread: torch's and FAISS's OpenMP thread counts for this thread."""
    import torch

    torch.set_num_threads(threads)
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except (ImportError, AttributeError):  # pragma: no cover - FAISS is a dependency
        pass


class WorkerPool:
    """Run blocking calls on a fixed set of threads with a bounded wait list.

    Args:
        workers: threads running calls at once (>= 1).
        threads: torch / FAISS threads each worker uses (>= 1).
        queue: calls allowed to wait when all workers are busy (>= 0); None = automatic: the work the
            workers serve in ``max_wait`` seconds, at most `AUTO_QUEUE_MAX` calls.
        retry_after: seconds suggested to a refused caller.
        max_wait: seconds of waiting work the automatic queue admits.

    Examples::

        pool = WorkerPool(workers=2, threads=1, queue=16)
        result = await pool.run(engine.search, text="a red circle")
    """

    def __init__(
        self, workers: int, threads: int, queue: int | None, retry_after: int = 2, max_wait: float = 3.0
    ) -> None:
        self.workers, self.threads, self.queue, self.retry_after = workers, threads, queue, retry_after
        self.max_wait = max_wait
        self._executor = ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix="counterclip-worker",
            initializer=_limit_threads,
            initargs=(threads,),
        )
        self._lock = threading.Lock()
        self._admitted = 0  # running + waiting
        self._expected = 0.0  # seconds of work admitted and not finished (automatic queue)
        self._seconds: dict[str, float] = {}  # kind of call -> running mean of its duration
        self.refused = 0  # calls refused since start (for /health)

    # --- places ---------------------------------------------------------------------------------------
    def admit(self, kind: str) -> Slot:
        """Take a place for a call of ``kind``; raises `ServerBusy` when the pool is full."""
        with self._lock:
            expected = self._seconds.get(kind, FIRST_GUESS_SECONDS)
            if self._full(expected):
                self.refused += 1
                raise ServerBusy(self.retry_after)
            self._admitted += 1
            self._expected += expected
            return Slot(kind, expected)

    def _full(self, expected: float) -> bool:
        waiting = self._admitted - self.workers  # calls that would wait before this one
        if self.queue is not None:
            return waiting >= self.queue
        if waiting < 0:
            return False
        if waiting >= AUTO_QUEUE_MAX:
            return True
        return (self._expected + expected) / self.workers > self.max_wait

    def leave(self, slot: Slot) -> None:
        """Give a place back (its measured seconds update its kind's mean duration)."""
        with self._lock:
            self._admitted -= 1
            self._expected = max(0.0, self._expected - slot.expected)
            if slot.seconds > 0:
                old = self._seconds.get(slot.kind)
                self._seconds[slot.kind] = (
                    slot.seconds if old is None else old + EWMA_WEIGHT * (slot.seconds - old)
                )

    # --- calls ----------------------------------------------------------------------------------------
    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on a worker, in the place of the request being served (or a place
        of its own); raises `ServerBusy` when the pool is full."""
        slot = _SLOT.get()
        own = slot is None
        if own:
            slot = self.admit(getattr(fn, "__name__", "call"))
        context = contextvars.copy_context()  # the request's reservations reach the worker
        try:
            future = self._executor.submit(context.run, _timed, slot, fn, args, kwargs)
        except BaseException:
            if own:
                self.leave(slot)
            raise
        if own:
            future.add_done_callback(lambda _: self.leave(slot))
        return await asyncio.wrap_future(future)

    def serving(self, slot: Slot) -> contextvars.Token:
        """Mark ``slot`` as the place of the calls the current request makes (`run` uses it)."""
        return _SLOT.set(slot)

    def done_serving(self, token: contextvars.Token) -> None:
        _SLOT.reset(token)

    def stats(self) -> dict[str, Any]:
        """Workers, threads per worker, queue size (None: automatic), calls admitted now, calls refused so
        far, and the measured seconds of each kind of call."""
        with self._lock:
            return {
                "workers": self.workers,
                "threads_per_worker": self.threads,
                "queue": self.queue,
                "max_wait_seconds": self.max_wait,
                "in_flight": self._admitted,
                "refused": self.refused,
                "seconds": {k: round(v, 4) for k, v in sorted(self._seconds.items())},
            }

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _timed(slot: Slot, fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
    started = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    finally:
        slot.seconds += time.perf_counter() - started
