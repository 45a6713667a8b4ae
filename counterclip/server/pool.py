"""A bounded worker pool for engine calls: N threads, T torch/FAISS threads each, Q waiting at most.

On a machine with C cores, N workers with C // N threads each keep the cores busy without
oversubscribing them (N workers each asking torch for C threads makes every query wait on the others).
A request that finds N running and Q waiting is refused at once (`ServerBusy`: 503 + Retry-After)
instead of joining a queue whose latency grows without limit.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

LOG = logging.getLogger(__name__)
T = TypeVar("T")


class ServerBusy(Exception):
    """Every worker is busy and the queue is full."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the server is busy (all workers busy, queue full); retry in {retry_after} s")
        self.retry_after = retry_after


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
        queue: calls allowed to wait when all workers are busy (>= 0).
        retry_after: seconds suggested to a refused caller.

    Examples::

        pool = WorkerPool(workers=2, threads=1, queue=16)
        result = await pool.run(engine.search, text="a red circle")
    """

    def __init__(self, workers: int, threads: int, queue: int, retry_after: int = 2) -> None:
        self.workers, self.threads, self.queue, self.retry_after = workers, threads, queue, retry_after
        self._executor = ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix="counterclip-worker",
            initializer=_limit_threads,
            initargs=(threads,),
        )
        self._lock = threading.Lock()
        self._admitted = 0  # running + waiting
        self.refused = 0  # calls refused since start (for /health)

    def _admit(self) -> None:
        with self._lock:
            if self._admitted >= self.workers + self.queue:
                self.refused += 1
                raise ServerBusy(self.retry_after)
            self._admitted += 1

    def _release(self, _: Any = None) -> None:
        with self._lock:
            self._admitted -= 1

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on a worker; raises `ServerBusy` when the pool is full."""
        self._admit()
        try:
            future = self._executor.submit(fn, *args, **kwargs)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def stats(self) -> dict[str, int]:
        """Workers, threads per worker, queue size, calls admitted now, calls refused so far."""
        with self._lock:
            return {
                "workers": self.workers,
                "threads_per_worker": self.threads,
                "queue": self.queue,
                "in_flight": self._admitted,
                "refused": self.refused,
            }

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
