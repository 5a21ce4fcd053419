"""Telemetry stores; :func:`open_store` picks one from a URL.

``sqlite:///fleet.db`` (relative path), ``sqlite:////var/lib/edgeslm/fleet.db`` (absolute),
``postgresql://user@host/db`` (optionally ``?schema=name``), ``memory://`` (the fake).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ...errors import TelemetryError
from .base import Batch, DeadLetter, DeviceRow, Store
from .memory import MemoryStore

__all__ = ["Batch", "DeadLetter", "DeviceRow", "MemoryStore", "Store", "open_store"]


def open_store(url: str, create: bool = True) -> Store:
    """Open the store named by ``url``; ``create`` makes its tables, ``create=False`` (the
    read-only views) refuses a store that does not exist instead of making an empty one."""
    if url.startswith("memory:"):
        return MemoryStore()
    if url.startswith("sqlite:"):
        from .sqlite import SQLiteStore

        path = url[len("sqlite:"):]
        if path.startswith("///"):
            path = path[3:]
        elif path.startswith("//"):
            raise TelemetryError(f"store URL {url!r}: use sqlite:///relative.db or sqlite:////absolute.db")
        if not path:
            raise TelemetryError(f"store URL {url!r} names no file")
        return SQLiteStore(path, create=create)
    if url.startswith(("postgresql:", "postgres:")):
        from .postgres import PostgresStore

        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        schema = query.pop("schema", None)
        return PostgresStore(urlunsplit(parts._replace(query=urlencode(query))), schema=schema, create=create)
    raise TelemetryError(f"store URL {url!r}: expected sqlite:///FILE, postgresql://... or memory://")
