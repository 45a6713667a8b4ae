"""The writer lock of an index directory (atomic writes live in `counterclip._fileio`)."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from counterclip.errors import IndexLockedError
from counterclip.index_builder.manifest import LOCK_NAME

_HELD_FDS: set[int] = set()  # lock fds held by this process
_FORK_HOOK = False


def _close_held_in_child() -> None:
    """After a fork, the child closes its copies of the lock fds, so the lock dies with the parent only."""
    for fd in list(_HELD_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_FDS.clear()


def _lock_owner(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        return "unknown"
    return text or "unknown"


class WriterLock:
    """Exclusive, non-blocking ``fcntl.flock`` on ``INDEX/.lock``; released on close or process death.

    Use as a context manager. A second writer gets `IndexLockedError` naming the holder's pid.
    """

    def __init__(self, index_dir: Path) -> None:
        self.path = index_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> WriterLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise IndexLockedError(
                    f"index {self.path.parent} is locked by another process (pid {_lock_owner(self.path)}); "
                    "wait for it to finish or stop it"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        global _FORK_HOOK
        if not _FORK_HOOK:
            os.register_at_fork(after_in_child=_close_held_in_child)
            _FORK_HOOK = True
        _HELD_FDS.add(fd)
        return self

    def release(self) -> None:
        if self._fd is not None:
            _HELD_FDS.discard(self._fd)
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def writer_pid(index_dir: Path) -> str | None:
    """The pid of the process building ``index_dir`` right now, or None when nobody holds the lock."""
    path = index_dir / LOCK_NAME
    if not path.exists():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _lock_owner(path)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
