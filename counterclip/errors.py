"""User-facing errors. Each carries a one-line message naming the thing and what to do.

The CLI prints them without a traceback (unless --debug) and exits with status 2.
"""

from __future__ import annotations


class CounterclipError(Exception):
    """Base class for errors the user can fix (bad input, missing file, wrong model)."""

    exit_code = 2


class ModelLoadError(CounterclipError):
    """A model spec that cannot be resolved or loaded."""


class InputError(CounterclipError):
    """A bad argument or input file."""


class IndexFormatError(CounterclipError):
    """An index directory that is missing, half-written, of another format, or built with another model."""


class IndexLockedError(CounterclipError):
    """Another process holds the index's write lock."""


class RuntimeExportError(CounterclipError):
    """A model tower that cannot be exported to (or run with) ONNX Runtime as asked, or whose export does not
    match torch within the accepted tolerance."""


class QuantizationRefusedError(RuntimeExportError):
    """An int8 tower that misses the accuracy bars against fp32 (cosine, recall@10) on the user's sample."""


class IndexDamagedError(IndexFormatError):
    """A file of an index whose bytes are not what the index recorded (truncated, zeroed, garbled, missing).

    The message names the file and the fix (``counterclip update INDEX --repair``); ``file`` is the
    file's name relative to the index directory and ``reason`` what is wrong with it.
    """

    def __init__(self, message: str, file: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.file = file
        self.reason = reason


class DiskFullError(CounterclipError):
    """No space left on the device while writing (the interrupted work resumes once space is freed)."""


class AccessDeniedError(CounterclipError):
    """Permission denied or a read-only file system where counterclip must read or write."""


class StoreUnavailableError(CounterclipError):
    """A vector store (a Qdrant server, a LanceDB directory or bucket) that does not answer, refuses the
    credentials, or answers too slowly: the message names the store and what to do."""
