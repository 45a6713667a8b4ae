"""Loading weights from a model hub without hanging offline.

The hubs' own clients retry for about a minute when there is no network (each retry logged twice). A
load that may fetch weights runs inside `hub_access`: it first tries one TCP connection to the hub (or
to the proxy the environment names), a few seconds at most; when that fails the load runs with the
hubs' offline flags on, so files already in the local cache still load and a missing one fails at once,
and the failure becomes one line: "no network to fetch WEIGHTS; use a local path or bundled:shapes".

Examples::

    with hub_access("ViT-B-32:openai") as online:
        module = open_clip.create_model(...)   # offline: cache only, no retries
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from counterclip.errors import ModelLoadError

LOG = logging.getLogger(__name__)
DEFAULT_ENDPOINT = "https://huggingface.co"
CONNECT_SECONDS = 3.0  # one connection attempt; a reachable hub answers in well under a second


def no_network_error(what: str, hint: str = "use a local path or bundled:shapes") -> ModelLoadError:
    """The one-line error of a load that needed the network and had none."""
    return ModelLoadError(f"no network to fetch {what}; {hint}")


def _endpoint_address(url: str | None = None) -> tuple[str, int]:
    """``(host, port)`` a hub request would connect to first: the proxy for its scheme when the
    environment names one, else the hub endpoint (``HF_ENDPOINT``, default huggingface.co)."""
    endpoint = url or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    parts = urlsplit(endpoint)
    scheme = parts.scheme or "https"
    host = parts.hostname or ""
    no_proxy = os.environ.get("NO_PROXY") or os.environ.get("no_proxy") or ""
    bypass = any(host.endswith(n.strip().lstrip(".")) for n in no_proxy.split(",") if n.strip())
    proxy = "" if bypass else (os.environ.get(f"{scheme.upper()}_PROXY") or os.environ.get(f"{scheme}_proxy"))
    if proxy:
        proxied = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        return proxied.hostname or "", proxied.port or 80
    return host, parts.port or (443 if scheme == "https" else 80)


def hub_reachable(url: str | None = None, timeout: float = CONNECT_SECONDS) -> bool:
    """Whether one TCP connection to the hub (or its proxy) opens within ``timeout`` seconds."""
    host, port = _endpoint_address(url)
    if not host:
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError as exc:
        LOG.info("hub %s:%d not reachable: %s", host, port, exc)
        return False


@contextmanager
def offline_flags() -> Iterator[None]:
    """The Hugging Face hub's offline mode (also read by transformers), for the ``with`` block only."""
    try:
        from huggingface_hub import constants
    except ImportError:  # no hub client: nothing to switch
        yield
        return
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


@contextmanager
def hub_access(
    what: str, hint: str = "use a local path or bundled:shapes", url: str | None = None
) -> Iterator[bool]:
    """Run a load that may fetch ``what`` from a hub: yields whether the hub is reachable.

    Offline, the block runs with the hubs' offline flags (cached files still load) and the libraries'
    own error logs are held back; a failure to find a file becomes `no_network_error` (a `ModelLoadError`
    about something else, such as weights that do not fit the architecture, passes unchanged).
    """
    if hub_reachable(url):
        yield True
        return
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)  # open_clip logs "Failed to download" on the root logger
    try:
        with offline_flags():
            yield False
    except ModelLoadError as exc:  # a loader's own message; offline, a missing file is the network
        if (
            isinstance(exc.__cause__, OSError)
            or "could not download" in str(exc)
            or "could not fetch" in str(exc)
        ):
            raise no_network_error(what, hint) from exc
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of an offline fetch is the missing network
        raise no_network_error(what, hint) from exc
    finally:
        root.setLevel(level)
