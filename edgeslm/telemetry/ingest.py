"""What the collector's writer thread does with a batch: parse, store (bisecting), acknowledge.

::

    items off the wire ──parse──> entries (Message | DeadLetter) ──write──> store
                                                    │ the store refuses the batch
                                                    ├─ store unavailable (connection, lock, disk):
                                                    │    wait and retry the same entries (until stop)
                                                    └─ store healthy, so the data is at fault:
                                                         split in halves and write each; a single
                                                         entry that still fails is dead-lettered
                                                         (reason "store") and the rest commit

One message can therefore never stop collection: validation (:mod:`.validate`) refuses what
would not fit, and whatever still trips the store is isolated in log2(batch) extra writes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Callable, Union

from . import schema, topics
from .stores.base import Batch, DeadLetter, Store

log = logging.getLogger("edgeslm.collector")

Entry = Union[schema.Message, DeadLetter]
MAX_DETAIL = 500  # characters of an error kept in a dead letter


def dead_letter(topic: str, reason: str, detail: str, payload: bytes, received_at: float,
                ack: tuple[str, str, int] | None = None) -> DeadLetter:
    detail = detail.replace("\x00", "\\x00")[:MAX_DETAIL]
    return DeadLetter(topic, reason, detail, len(payload), bytes(payload[:1024]), received_at, ack)


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def to_entries(items: list[tuple], max_bytes: int) -> list[Entry]:
    """(topic, payload, mid, qos, received_at) items -> validated messages and dead letters, in order."""
    out: list[Entry] = []
    for topic, payload, _, _, received_at in items:
        if not payload and topic.endswith("/status"):
            continue  # an empty retained message clears a device's status: not an error
        try:
            out.append(schema.parse(topic, payload, max_bytes, received_at))
        except schema.MessageError as exc:
            out.append(dead_letter(topic, exc.reason, str(exc), payload, received_at, exc.ack))
        except Exception as exc:  # a bug in a check must cost one message, not the collector
            log.exception("validating a message from %s failed", topic)
            out.append(dead_letter(topic, "internal", f"{type(exc).__name__}: {exc}", payload, received_at))
    return out


def batch_of(entries: list[Entry]) -> Batch:
    b = Batch()
    for e in entries:
        if isinstance(e, DeadLetter):
            b.dead.append(e)
        elif e.kind == "telemetry":
            b.telemetry.append(e)
        elif e.kind == "status":
            b.status.append(e)
        else:
            b.events.append(e)
    return b


@dataclass
class WriteResult:
    new: int = 0  # telemetry rows that were not in the store yet
    telemetry: int = 0
    status: int = 0
    events: int = 0
    dead: list[DeadLetter] = field(default_factory=list)  # written to dead_letters (refused + isolated)
    lost: int = 0  # dead letters the store refused too (logged, then dropped)
    writes: int = 0  # store transactions, bisection included
    store_errors: int = 0  # writes the store refused for their data (transient failures go to on_store_down)


def write_entries(store: Store, entries: list[Entry], stop: threading.Event,
                  on_store_down: Callable[[BaseException, float], None] | None = None) -> WriteResult | None:
    """Write ``entries`` (bisecting around bad data); None if ``stop`` was set while the store was down."""
    res = WriteResult()
    pending: deque[list[Entry]] = deque([entries] if entries else [])
    delay = 0.2
    while pending:
        chunk = pending.popleft()
        batch = batch_of(chunk)
        try:
            res.writes += 1
            new = store.write(batch)
        except Exception as exc:
            if store.is_transient(exc):
                if on_store_down:
                    on_store_down(exc, delay)
                if stop.wait(delay):
                    return None  # nothing more is acknowledged: the broker redelivers it to the next session
                delay = min(delay * 2, 10.0)
                pending.appendleft(chunk)
            elif len(chunk) > 1:
                res.store_errors += 1
                mid = len(chunk) // 2
                pending.extendleft([chunk[mid:], chunk[:mid]])
            else:
                res.store_errors += 1
                _isolate(store, chunk[0], exc, res)
            continue
        delay = 0.2
        res.new += new
        res.telemetry += len(batch.telemetry)
        res.status += len(batch.status)
        res.events += len(batch.events)
        res.dead.extend(batch.dead)
    return res


def _isolate(store: Store, entry: Entry, exc: BaseException, res: WriteResult) -> None:
    """One entry the (healthy) store refuses: keep it as a dead letter, or drop it with a log line."""
    detail = f"the store refused it: {type(exc).__name__}: {one_line(exc)}"
    if isinstance(entry, DeadLetter):
        log.error("dropping a dead letter from %s the store refused: %s", entry.topic, detail)
        res.lost += 1
        return
    topic = topics.topic(entry.fleet, entry.device, "events" if entry.kind == "event" else entry.kind)
    ack = (entry.fleet, entry.device, entry.seq) if entry.seq is not None else None
    d = dead_letter(topic, "store", detail, entry.raw, entry.received_at or time.time(), ack)
    try:
        res.writes += 1
        store.write(Batch(dead=[d]))
        res.dead.append(d)
    except Exception as again:  # even its dead letter: log it, never loop on it
        res.store_errors += 1
        res.lost += 1
        log.error("dropping a message from %s: %s; and its dead letter: %s", topic, detail, again)


def handled_seqs(entries: list[Entry]) -> dict[tuple[str, str], list[int]]:
    """Per device, the sequence numbers now handled: stored, or refused for good."""
    seqs: dict[tuple[str, str], list[int]] = defaultdict(list)
    for e in entries:
        if isinstance(e, DeadLetter):
            ack = e.ack
            if ack is not None and e.reason not in NOT_ACKED:
                seqs[ack[:2]].append(ack[2])
        elif e.seq is not None and e.kind in ("telemetry", "event"):
            seqs[(e.fleet, e.device)].append(e.seq)
    return seqs


def to_ranges(values: list[int]) -> list[list[int]]:
    """Sorted [first, last] ranges covering ``values``."""
    values = sorted(values)
    ranges = [[values[0], values[0]]]
    for v in values[1:]:
        if v <= ranges[-1][1] + 1:
            ranges[-1][1] = max(ranges[-1][1], v)
        else:
            ranges.append([v, v])
    return ranges


def ack_ranges(entries: list[Entry]) -> dict[tuple[str, str], list[list[int]]]:
    """Per device, the handled sequence numbers as [first, last] ranges."""
    return {key: to_ranges(values) for key, values in handled_seqs(entries).items()}


#: dead-letter reasons the sender should NOT forget: a collector that reads them may come later
NOT_ACKED = frozenset({"schema_version"})
