"""Server settings: limits, who may call, and how much work runs at once (no FastAPI import here)."""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field

from counterclip.errors import InputError

TOKEN_ENV = "COUNTERCLIP_TOKEN"  # environment variable read when --token is not given
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
#: Bytes a request holds per byte of its body while it is read and parsed (`counterclip.server.admission`):
#: the body, the JSON text decoded from it, a base64 upload's ``data:`` suffix and its ASCII copy, and
#: the decoded file (4.75 at most).
BODY_FACTOR = 5
DEFAULT_MEMORY_BUDGET = 1024 * 1024 * 1024  # bytes all requests' bodies and decoded uploads may hold at once


@dataclass(frozen=True)
class Limits:
    """What one request may carry. Everything above is refused with a 4xx before any work is done."""

    max_body_bytes: int = 16 * 1024 * 1024  # whole request body (a base64 upload is 4/3 of the file)
    max_upload_bytes: int = 10 * 1024 * 1024  # one uploaded image file, after base64 decoding
    max_upload_pixels: int = 40_000_000  # width * height of an upload, read from its header before decoding
    max_upload_side: int = 16_384  # longest side of an upload, from its header
    max_text_chars: int = 1_000  # one query text or label
    max_labels: int = 100  # flip mode: labels in the set

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_upload_bytes", "max_upload_pixels", "max_upload_side"):
            if getattr(self, name) < 1:
                raise InputError(f"limit {name} must be positive, got {getattr(self, name)}")
        if self.max_text_chars < 1 or self.max_labels < 2:
            raise InputError("max_text_chars must be >= 1 and max_labels >= 2")

    @classmethod
    def sized_for_upload(cls, max_upload_bytes: int, max_upload_pixels: int, max_text_chars: int) -> Limits:
        """Limits around the largest upload: the body holds it base64-encoded (4/3 of the file) plus 64 KB
        of JSON, and is never smaller than the default 16 MB."""
        return cls(
            max_upload_bytes=max_upload_bytes,
            max_body_bytes=max(16 * 1024 * 1024, max_upload_bytes * 4 // 3 + 64 * 1024),
            max_upload_pixels=max_upload_pixels,
            max_text_chars=max_text_chars,
        )


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ServerSettings:
    """How `create_app` guards and schedules requests.

    Examples::

        ServerSettings()                                   # loopback, no token, sized to the machine
        ServerSettings(host="0.0.0.0", token="s3cret", allowed_hosts=("gpu-box.lan",))
    """

    host: str = "127.0.0.1"  # the interface the server listens on; off loopback a token is required
    token: str | None = None  # bearer token; None = no auth (only allowed on loopback)
    allowed_hosts: tuple[
        str, ...
    ] = ()  # Host header names accepted besides loopback and the bind host; "*" = any
    cors_origins: tuple[str, ...] = ()  # origins allowed to call the API from a browser; () = CORS off
    workers: int | None = None  # engine calls running at once; None = one per core
    torch_threads: int | None = None  # torch/FAISS threads per worker; None = cores // workers (>= 1)
    queue: int | None = None  # queries waiting for a worker (one more: 503); None = automatic
    max_wait: float = 3.0  # seconds of work the automatic queue lets wait (at most 64 queries)
    memory_budget: int = DEFAULT_MEMORY_BUDGET  # bytes requests in progress may hold; beyond: 503
    body_timeout: float = 60.0  # seconds a request body may take to arrive (then 408)
    retry_after: int = 2  # seconds, sent with a 503
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise InputError(f"workers must be >= 1, got {self.workers}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise InputError(f"torch_threads must be >= 1, got {self.torch_threads}")
        if self.queue is not None and self.queue < 0:
            raise InputError(f"queue must be >= 0, got {self.queue}")
        if not self.max_wait > 0 or not self.body_timeout > 0:
            raise InputError(
                f"max_wait and body_timeout must be > 0, got {self.max_wait}, {self.body_timeout}"
            )
        least = BODY_FACTOR * self.limits.max_body_bytes + 3 * self.limits.max_upload_pixels
        if self.memory_budget < least:
            raise InputError(
                f"a memory budget of {self.memory_budget / 2**20:.0f} MB cannot hold one request at the limits "
                f"(a body of {self.limits.max_body_bytes / 2**20:.0f} MB and an upload of "
                f"{self.limits.max_upload_pixels / 1e6:.0f} megapixels need {least / 2**20:.0f} MB): raise it "
                "or lower the upload limits"
            )
        if self.token is not None and len(self.token) < 8:
            raise InputError(
                "the token must be at least 8 characters (e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`)"
            )
        if not is_loopback(self.host) and not self.token:
            raise InputError(
                f"listening on {self.host or '0.0.0.0'} exposes the API to the network: give --token TOKEN "
                f"(or set {TOKEN_ENV}); callers then send 'Authorization: Bearer TOKEN'"
            )

    @property
    def pool_workers(self) -> int:
        return self.workers or available_cores()

    @property
    def pool_threads(self) -> int:
        return self.torch_threads or max(1, available_cores() // self.pool_workers)

    def host_names(self) -> frozenset[str] | None:
        """Lower-case Host header names the server answers to (without port); None = any."""
        if "*" in self.allowed_hosts:
            return None
        names = {*LOOPBACK_NAMES, *(h.lower().strip("[]") for h in self.allowed_hosts)}
        host = self.host.strip("[]").lower()
        if host in WILDCARD_HOSTS:
            # every interface: the names this machine knows itself by (others with --allowed-host)
            names.update(_own_names())
        else:
            names.add(host)
        return frozenset(names)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def page_url(host: str, port: int) -> str:
    """The address to open the page at: a wildcard host is reached on loopback, IPv6 in brackets."""
    shown = "127.0.0.1" if host in WILDCARD_HOSTS else (f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}/"


def _own_names() -> set[str]:
    names = {socket.gethostname().lower(), socket.getfqdn().lower()}
    try:
        names.update(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    return {n for n in names if n}


def split_host_header(value: str) -> str:
    """``example.org:8000`` -> ``example.org``; ``[::1]:8000`` -> ``::1``; lower-case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value
