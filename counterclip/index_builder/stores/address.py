"""Store addresses: ``lancedb://DIR/TABLE``, ``qdrant://HOST:PORT/COLLECTION``, ``qdrant+local://DIR/COLLECTION``
(and ``faiss://INDEX_DIR``, counterclip's own index): `parse_store_uri` reads one (`uri.open_store`
opens the store).

A directory may be relative (resolved against the working directory, recorded absolute) or an object
store address LanceDB reads (``lancedb://s3://bucket/db/TABLE``). Qdrant's API key comes from the
environment (``QDRANT_API_KEY``), never from the address; ``?timeout=SECONDS`` overrides the default
time a server may take to answer (`DEFAULT_TIMEOUT`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import parse_qs

from counterclip.errors import InputError

SCHEMES = ("faiss", "lancedb", "qdrant", "qdrant+local")
DEFAULT_TIMEOUT = 10.0  # seconds a store server may take to answer one call
API_KEY_ENV = "QDRANT_API_KEY"
CAPTIONS_SUFFIX = "_captions"  # a built store keeps its captions beside its images, in TABLE_captions
EXAMPLES = "lancedb://DIR/TABLE, qdrant://HOST:PORT/COLLECTION or qdrant+local://DIR/COLLECTION"


@dataclass(frozen=True)
class StoreURI:
    """A parsed store address.

    Attributes:
        scheme: one of `SCHEMES`.
        location: the directory (lancedb, qdrant+local, faiss) or ``HOST:PORT`` (qdrant).
        name: the table or collection (``""`` for faiss).
        timeout: seconds a server may take per call.
    """

    scheme: str
    location: str
    name: str
    timeout: float = DEFAULT_TIMEOUT

    def __str__(self) -> str:
        tail = f"/{self.name}" if self.name else ""
        query = f"?timeout={self.timeout:g}" if self.timeout != DEFAULT_TIMEOUT else ""
        return f"{self.scheme}://{self.location}{tail}{query}"

    @property
    def kind(self) -> str:
        """``faiss``, ``lancedb`` or ``qdrant`` (the engine, whichever way it is reached)."""
        return self.scheme.split("+")[0]

    def captions(self) -> StoreURI:
        """Where a built store keeps its captions: the same place, ``NAME_captions``."""
        return replace(self, name=self.name + CAPTIONS_SUFFIX)


def parse_store_uri(text: str) -> StoreURI:
    """Parse a store address (see the module docstring); `InputError` naming the expected forms."""
    scheme, sep, rest = str(text).partition("://")
    if not sep or scheme not in SCHEMES:
        raise InputError(f"store {text!r}: give {EXAMPLES}")
    rest, _, query = rest.partition("?")
    timeout = DEFAULT_TIMEOUT
    if query:
        params = parse_qs(query)
        unknown = sorted(set(params) - {"timeout"})
        if unknown:
            raise InputError(f"store {text!r}: unknown option(s) {unknown} (known: timeout)")
        try:
            timeout = float(params["timeout"][0])
        except ValueError:
            raise InputError(f"store {text!r}: timeout must be a number of seconds") from None
    if scheme == "faiss":
        return StoreURI(scheme, _local(rest), "", timeout)
    location, _, name = rest.rstrip("/").rpartition("/")
    if not location or not name:
        raise InputError(f"store {text!r}: the address needs a place and a name, e.g. {EXAMPLES}")
    if scheme == "qdrant":
        host, _, port = location.partition(":")
        if not host or "/" in location or (port and not port.isdigit()):
            raise InputError(
                f"store {text!r}: qdrant://HOST:PORT/COLLECTION, e.g. qdrant://localhost:6333/photos"
            )
        location = f"{host}:{port or 6333}"
    elif "://" not in location:  # an object store address (s3://...) stays as written
        location = _local(location)
    return StoreURI(scheme, location, name, timeout)


def _local(path: str) -> str:
    return str(Path(path).expanduser().absolute())
