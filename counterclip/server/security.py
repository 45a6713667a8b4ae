"""Guards in front of every route (pure ASGI middlewares, so they also cover static files and errors).

- `ErrorGuard` (outermost): any exception becomes a JSON 500 and is logged; the exception is not
  re-raised, so the server keeps the connection and every other request goes on.
- `AccessGuard`: Host-header allow-list (400), bearer token (401), request body size (413), and
  security headers on every response.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import HTTPException

from counterclip.server.settings import ServerSettings, split_host_header

LOG = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TOKEN_COOKIE = "counterclip_token"
#: Paths anyone may fetch when a token is set: the page and its assets (they hold no index data), the
#: API description, and the call that turns a token into a cookie.
PUBLIC_PATHS = ("/", "/docs", "/openapi.json", "/favicon.ico", "/auth/session")
PUBLIC_PREFIXES = ("/static/",)
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


def session_cookie(token: str) -> str:
    """The login cookie's value for ``token``: an HMAC-SHA256 keyed by the token, never the token itself
    (a cookie read from a browser or a log is no bearer token), stable across restarts."""
    return hmac.new(token.encode(), b"counterclip session cookie v1", hashlib.sha256).hexdigest()


class BodyTooLarge(HTTPException):
    """The request body passed the limit (raised while it is read; FastAPI passes HTTPExceptions on)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than the limit of {limit} bytes")


async def send_json(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    """Send a complete JSON error response ``{"detail": ...}``."""
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *SECURITY_HEADERS,
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class ErrorGuard:
    """Turn any exception escaping the app into a logged JSON 500 (the connection stays usable)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            LOG.exception("internal error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await send_json(
                    send, 500, f"internal server error ({type(exc).__name__}); see the server log"
                )


class AccessGuard:
    """Host allow-list, bearer token and body size limit; adds security headers to every response."""

    def __init__(self, app: ASGIApp, settings: ServerSettings) -> None:
        self.app = app
        self.settings = settings
        self.hosts = settings.host_names()
        self.token = settings.token.encode() if settings.token else None
        self.cookie = session_cookie(settings.token).encode() if settings.token else None
        self.max_body = settings.limits.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.hosts is not None:
            host = split_host_header(headers.get("host", ""))
            if host not in self.hosts:
                await send_json(
                    send,
                    400,
                    f"Host header {host!r} is not allowed; start the server with --allowed-host {host or 'NAME'} "
                    "if this is the name clients use",
                )
                return
        if self.token is not None and not self._public(scope) and not self._authorised(headers):
            await send_json(
                send,
                401,
                "missing or wrong token: send 'Authorization: Bearer TOKEN' (the page asks for it once)",
                [(b"www-authenticate", b'Bearer realm="counterclip"')],
            )
            return
        length = headers.get("content-length")
        if length is not None and not length.strip().isdigit():
            await send_json(send, 400, f"Content-Length is not a number: {length[:40]!r}")
            return
        if length is not None and int(length) > self.max_body:
            await send_json(send, 413, f"request body larger than the limit of {self.max_body} bytes")
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        async def secured_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, limited_receive, secured_send)

    @staticmethod
    def _public(scope: Scope) -> bool:
        path = scope.get("path", "")
        if scope.get("method") == "OPTIONS":  # CORS preflight carries no credentials
            return True
        return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)

    def _authorised(self, headers: dict[str, str]) -> bool:
        assert self.token is not None and self.cookie is not None
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            return hmac.compare_digest(auth[7:].strip().encode("latin-1", "replace"), self.token)
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == TOKEN_COOKIE:
                return hmac.compare_digest(
                    urllib.parse.unquote(value).encode("latin-1", "replace"), self.cookie
                )
        return False
