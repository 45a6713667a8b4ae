"""Admission: every request is weighed against a memory budget and the worker pool before its body is read.

A body is not read and parsed first and refused later: `AdmissionGuard` (a pure ASGI middleware, inside
the Host/token guard) looks at the request line and ``Content-Length``, and

- a query (``POST /search``, ``/counterfactual``, ``/maps``, ``/report``, ``GET /images/ID/meta``) takes
  a place in the worker pool (`WorkerPool.admit`: running + waiting, bounded by the queue setting or by
  the seconds of work already waiting);
- a body reserves ``BODY_FACTOR`` bytes per byte of ``Content-Length`` from the `MemoryBudget` (the body,
  the JSON text decoded from it and the base64 copies of an upload), plus `VALUE_BYTES` per JSON value
  once it is read (``[[],[],...]`` costs Python objects, not bytes); a chunked body reserves as it comes;
- an uploaded image reserves its decoded size (width x height x 3 bytes, from its header, before any
  pixel is decoded: `reserve`, called by the upload decoder on the worker).

Whatever would pass the budget or the pool is answered at once with 503 and ``Retry-After``, before a
byte of its body is read (the server discards the body as it arrives). The reservations are returned
when the response has been sent, so the bytes requests hold at once never pass the budget, whatever the
number of clients and the sizes of their bodies.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import ctypes.util
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute

from counterclip.server.pool import ServerBusy, WorkerPool
from counterclip.server.security import send_json
from counterclip.server.settings import BODY_FACTOR  # noqa: F401 - bytes held per body byte (re-exported)

LOG = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Routes whose work runs on the worker pool: they take a place in it before their body is read.
QUERY_PATHS = frozenset({"/search", "/counterfactual", "/maps", "/report"})
#: Bytes held per JSON value once parsed (an empty dict is 64 bytes, a list 56, a float 24, plus a slot).
VALUE_BYTES = 96
#: Bytes every admitted request holds besides its body (headers, the parsed request, the response).
REQUEST_BYTES = 256 * 1024
#: A finished request that held this much gives its freed memory back to the OS (`release_memory`).
TRIM_AFTER_BYTES = 8 * 1024 * 1024

JSON_DEPTH = 1000  # Python's JSON parser refuses deeper nesting (its recursion limit)
PARSED_KEY = "counterclip.parsed_json"  # the scope key of a body parsed by the guard
_NOTHING = object()

_TICKET: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar("counterclip_ticket", default=None)


class BudgetExceeded(HTTPException):
    """Raised while a body is read or an upload decoded: the memory budget cannot hold it now (503)."""

    def __init__(self, retry_after: int, what: str) -> None:
        super().__init__(
            503,
            f"the server is busy (its memory budget is taken by other requests; {what}); retry in {retry_after} s",
            headers={"retry-after": str(retry_after)},
        )


class MemoryBudget:
    """Bytes that requests in progress may hold at once; a reservation that does not fit is refused."""

    def __init__(self, budget: int, retry_after: int) -> None:
        self.budget, self.retry_after = int(budget), retry_after
        self._lock = threading.Lock()
        self.reserved = 0
        self.peak = 0  # the most reserved at once since start
        self.refused = 0  # reservations refused since start

    def take(self, amount: int) -> bool:
        """Reserve ``amount`` bytes if they fit; False (and counted as refused) when they do not."""
        with self._lock:
            if self.reserved + amount > self.budget:
                self.refused += 1
                return False
            self.reserved += amount
            self.peak = max(self.peak, self.reserved)
            return True

    def give(self, amount: int) -> None:
        with self._lock:
            self.reserved -= amount

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "budget_bytes": self.budget,
                "reserved_bytes": self.reserved,
                "peak_bytes": self.peak,
                "refused": self.refused,
            }


class Ticket:
    """What one admitted request holds: bytes of the budget (grown as its body and upload are known)."""

    def __init__(self, budget: MemoryBudget, held: int) -> None:
        self.budget = budget
        self.held = held

    def grow(self, amount: int, what: str) -> None:
        """Reserve ``amount`` more bytes; raises `BudgetExceeded` (503) when the budget cannot hold them."""
        if amount <= 0:
            return
        if not self.budget.take(amount):
            raise BudgetExceeded(self.budget.retry_after, what)
        self.held += amount

    def close(self) -> None:
        self.budget.give(self.held)
        if self.held >= TRIM_AFTER_BYTES:
            release_memory()
        self.held = 0


def reserve(amount: int, what: str) -> None:
    """Reserve ``amount`` bytes for the request being served (a no-op outside a request): an upload's
    decoded size before it is decoded. Raises `BudgetExceeded` (503) when the budget cannot hold them."""
    ticket = _TICKET.get()
    if ticket is not None:
        ticket.grow(amount, what)


def json_values(body: bytes) -> int:
    """An upper bound of the values a JSON text holds: one per ``,`` plus one per level of nesting (at
    most `JSON_DEPTH`: deeper, Python's parser refuses it)."""
    return body.count(b",") + JSON_DEPTH + 1


class PreparsedRoute(APIRoute):
    """A route whose JSON body the admission guard has parsed already (one body at a time, so a few
    large bodies never hold the event loop at once): FastAPI reads it instead of parsing it again."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            parsed = request.scope.get(PARSED_KEY, _NOTHING)
            if parsed is not _NOTHING:
                request._json = parsed  # Starlette's cache of request.json()
            return await handler(request)

        return route


async def send_busy(send: Send, detail: str, retry_after: int) -> None:
    await send_json(send, 503, detail, [(b"retry-after", str(retry_after).encode())])


class AdmissionGuard:
    """Admit a request against the pool and the memory budget before its body is read; read the body
    with its reservation grown as it comes (and its JSON values counted), then hand it to the app.

    Args:
        app: the ASGI app.
        pool: the `WorkerPool` queries run on (a query takes one of its places first).
        budget: the `MemoryBudget`.
        body_timeout: seconds a body may take to arrive (a slow client holds its reservation): 408 after.
    """

    def __init__(self, app: ASGIApp, pool: WorkerPool, budget: MemoryBudget, body_timeout: float) -> None:
        self.app, self.pool, self.budget, self.body_timeout = app, pool, budget, body_timeout
        self._parse_turn = asyncio.Lock()  # one body parsed at a time; other events run in between

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope.get("method", "GET"), scope.get("path", "")
        query = (method == "POST" and path in QUERY_PATHS) or (
            method == "GET" and path.startswith("/images/") and path.endswith("/meta")
        )
        has_body = method in ("POST", "PUT", "PATCH")
        if not query and not has_body:
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        ticket = Ticket(self.budget, 0)
        try:
            ticket.grow(REQUEST_BYTES + BODY_FACTOR * (length or 0), f"a body of {length or 0} bytes")
        except BudgetExceeded as exc:
            await send_busy(send, exc.detail, self.budget.retry_after)
            return
        try:
            slot = self.pool.admit(path) if query else None
        except ServerBusy as exc:
            ticket.close()
            await send_busy(send, str(exc), exc.retry_after)
            return
        token = _TICKET.set(ticket)
        serving = self.pool.serving(slot) if slot is not None else None
        try:
            body = await self._read_body(receive, send, ticket, length) if has_body else None
            if has_body and body is None:
                return  # answered already (503 or 408)
            if body:
                scope = await self._parsed(scope, body)
            await self.app(scope, _replay(body, receive) if body is not None else receive, send)
        finally:
            _TICKET.reset(token)
            if slot is not None:
                self.pool.done_serving(serving)
                self.pool.leave(slot)
            ticket.close()

    async def _read_body(
        self, receive: Receive, send: Send, ticket: Ticket, length: int | None
    ) -> bytes | None:
        """The whole body (the guard in front caps its size), or None once a 503 / 408 has been sent."""
        chunks: list[bytes] = []
        received = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        try:
            while True:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                if chunk:
                    received += len(chunk)
                    if length is None or received > length:  # chunked: reserve as it comes
                        ticket.grow(BODY_FACTOR * len(chunk), f"a body of {received}+ bytes")
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            ticket.grow(VALUE_BYTES * json_values(body), "a body of many JSON values")
            return body
        except (
            HTTPException
        ) as exc:  # over the budget (503), or over the body limit (413, the guard in front)
            headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (exc.headers or {}).items()]
            await send_json(send, exc.status_code, str(exc.detail), headers)
        except TimeoutError:
            await send_json(send, 408, f"the request body did not arrive within {self.body_timeout:g} s")
        return None

    async def _parsed(self, scope: Scope, body: bytes) -> Scope:
        """``scope`` with the body's JSON value (`PreparsedRoute` gives it to FastAPI); unchanged when the
        body is not JSON (FastAPI then answers as it does)."""
        async with self._parse_turn:
            try:
                value = json.loads(body)
            except (ValueError, RecursionError):
                return scope
        return {**scope, PARSED_KEY: value}


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key.lower() == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the app the whole body once, then waits on the connection (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# --- the C allocator ------------------------------------------------------------------------------------
_LIBC: Any = None
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1024 * 1024


def tune_allocator() -> None:
    """Make large buffers go back to the OS when freed (glibc only; elsewhere a no-op).

    glibc raises its mmap threshold each time a large block is freed (up to 32 MB), so after a few large
    bodies every later one is carved from the heap and stays there: a flood leaves gigabytes held. A
    fixed threshold of 1 MB keeps every body-sized buffer in its own mapping, unmapped on free.
    """
    global _LIBC
    if _LIBC is not None:
        return
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.malloc_trim  # noqa: B018 - glibc has it; others do not
    except (OSError, AttributeError):
        _LIBC = False
        return
    _LIBC = libc


def release_memory() -> None:
    """Give freed heap memory back to the OS (glibc's ``malloc_trim``; elsewhere a no-op)."""
    if _LIBC:
        _LIBC.malloc_trim(0)
