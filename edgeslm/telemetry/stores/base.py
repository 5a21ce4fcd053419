"""The store contract the collector writes to, and the row shapes every store shares.

A store is idempotent on (fleet, device, seq): brokers redeliver after a crash or a lost
PUBACK, so writing the same telemetry message twice must leave one row. Malformed messages
go to a dead-letter table with a reason, so they are counted rather than crashing anything.

Implementations: :class:`~.sqlite.SQLiteStore` (default, WAL), :class:`~.postgres.PostgresStore`
(psycopg 3, COPY), :class:`~.memory.MemoryStore` (the fake for tests and live views).
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any

from ..schema import Message
from ..validate import METRIC_COLUMNS


@dataclass
class DeadLetter:
    topic: str
    reason: str  # malformed_json | schema_version | invalid | oversized | topic | store
    detail: str  # the one-line error
    size: int  # payload bytes as received
    payload: bytes  # first KiB only, enough to debug the sender
    received_at: float = field(default_factory=time.time)
    #: (fleet, device, seq) of the refused message when known (not stored): the collector tells the
    #: device it may forget it, since sending it again would be refused again
    ack: tuple[str, str, int] | None = field(default=None, compare=False, repr=False)


@dataclass
class Batch:
    """What the collector hands to a store in one transaction."""

    telemetry: list[Message] = field(default_factory=list)
    status: list[Message] = field(default_factory=list)
    events: list[Message] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.telemetry) + len(self.status) + len(self.events) + len(self.dead)


@dataclass
class DeviceRow:
    """One line of ``edgeslm fleet status``: the latest status and telemetry of a device."""

    fleet: str
    device: str
    online: bool | None = None  # None: no status message seen yet
    reason: str | None = None  # connected | shutdown | lost
    status_ts: float | None = None  # the device's ts in its newest status (display only)
    status_received_at: float | None = None  # collector receive time of the newest status (orders statuses)
    last_seen: float | None = None  # ts of the newest telemetry (device clock)
    last_seq: int | None = None
    model_id: str | None = None
    model_hash: str | None = None
    runtime: str | None = None
    requests: int | None = None  # in the newest interval
    errors: int | None = None  # in the newest interval
    ttft_p95_s: float | None = None
    duration_p95_s: float | None = None
    tok_s_p50: float | None = None
    cpu: float | None = None
    temperature: float | None = None
    last_received_at: float | None = None  # collector receive time of the newest telemetry (staleness)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: flattened telemetry columns, in insert order (payload keeps everything else)
TELEMETRY_COLUMNS = ("fleet", "device", "seq", "ts", "received_at") + METRIC_COLUMNS + ("payload",)
DEVICE_COLUMNS = ("fleet", "device", "last_seen", "last_seq", "model_id", "model_hash", "runtime", "requests", "errors",
                  "ttft_p95_s", "duration_p95_s", "tok_s_p50", "cpu", "temperature", "last_received_at")
_COL = {c: i for i, c in enumerate(METRIC_COLUMNS)}
_DEVICE_METRICS = tuple(_COL[c] for c in ("requests", "errors", "ttft_p95_s", "duration_p95_s", "tok_s_p50", "cpu",
                                          "temperature"))


def telemetry_row(msg: Message, received_at: float) -> tuple:
    """The telemetry table's values for ``msg`` (columns were extracted once, by validation)."""
    return (msg.fleet, msg.device, msg.seq, msg.ts, msg.received_at or received_at) + msg.columns + (msg.text,)


def device_row(msg: Message, received_at: float = 0.0) -> tuple:
    """The devices-table values a telemetry message sets (newest seq wins)."""
    c = msg.columns
    return ((msg.fleet, msg.device, msg.ts, msg.seq, c[0], c[1], msg.resource.get("edgeslm.runtime"))
            + tuple(c[i] for i in _DEVICE_METRICS) + (msg.received_at or received_at,))


def newest_per_device(msgs: list[Message]) -> list[Message]:
    best: dict[tuple[str, str], Message] = {}
    for msg in msgs:
        key = (msg.fleet, msg.device)
        cur = best.get(key)
        if cur is None or (msg.seq or 0) > (cur.seq or 0):
            best[key] = msg
    return list(best.values())


def newest_status(msgs: list[Message]) -> list[Message]:
    """The status each device had last, by broker arrival: the last one received wins.

    Not by the device's ``ts``: a last will is written when the device connects, so its ``ts``
    is older than the "connected" status that follows it, and a device clock far in the future
    would otherwise pin a device online for good.
    """
    best: dict[tuple[str, str], Message] = {}
    for msg in msgs:  # in receive order
        key = (msg.fleet, msg.device)
        if key not in best or msg.received_at >= best[key].received_at:
            best[key] = msg
    return list(best.values())


def event_row(msg: Message, received_at: float) -> tuple:
    b = msg.body
    return (b["id"], msg.fleet, msg.device, msg.ts, received_at, b["name"], b.get("severity") or "info",
            b.get("source") or "", b.get("message") or "", json.dumps(b.get("attributes") or {}))


EVENT_COLUMNS = ("id", "fleet", "device", "ts", "received_at", "name", "severity", "source", "message", "attributes")


class Store(ABC):
    """Where the collector puts what it receives, and where the fleet views read from."""

    @abstractmethod
    def write(self, batch: Batch) -> int:
        """Write a batch in one transaction; return how many telemetry rows were new."""

    @abstractmethod
    def devices(self, fleet: str | None = None) -> list[DeviceRow]:
        """Latest state of every device (of one fleet), sorted by fleet then device."""

    @abstractmethod
    def history(self, fleet: str | None, device: str, limit: int = 50) -> list[dict[str, Any]]:
        """The newest ``limit`` telemetry rows of a device, newest first (flattened columns)."""

    @abstractmethod
    def events(self, fleet: str | None = None, device: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The newest events, newest first."""

    @abstractmethod
    def dead_letter_counts(self) -> dict[str, int]:
        """{reason: count} of refused messages."""

    @abstractmethod
    def telemetry_count(self, fleet: str | None = None) -> int:
        """Telemetry rows stored (of one fleet)."""

    def healthy(self) -> bool:
        """True when the store can take a write now (a store that lost its connection reconnects here)."""
        return True

    def is_transient(self, exc: BaseException) -> bool:
        """For a failed :meth:`write`: True if the store is unavailable (retry the batch later),
        False if the data caused it (the collector then bisects the batch to find the message)."""
        return not self.healthy()

    def close(self) -> None:
        """Release connections."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
