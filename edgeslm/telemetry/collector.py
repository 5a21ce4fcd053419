"""The collector: MQTT v5 subscriber that validates, batches and stores fleet telemetry.

* **Persistent session** (stable client id, ``clean_start=False``, session expiry): the
  broker queues what arrives while the collector is down and delivers it on return.
* **Shared subscription** ``$share/<group>/edgeslm/v1/<fleet>/+/telemetry`` (and events): N
  collectors in one group split a fleet. Status (retained) is a plain subscription, so every
  collector knows every device's online state.
* **At least once, stored once**: messages are acknowledged (manual PUBACK) only after the
  batch holding them is committed; the store ignores a (fleet, device, seq) it already has,
  so redelivery after a crash is harmless.
* **End to end**: after its commits the collector publishes, per device (gathered for
  ``ack_every_s``), the sequence numbers it now holds on ``edgeslm/v1/<fleet>/<device>/acks``;
  agents keep a message until then, so a broker PUBACK that reached some other subscriber (a
  live view) loses nothing.
* **One message never stops it** (:mod:`.ingest`): every field is validated; a batch the store
  still refuses is bisected so only the offending message becomes a dead letter; a store that
  is down is retried without acknowledging anything; a failure of its own threads is kept in
  :attr:`Collector.error` (the CLI exits non-zero on it) instead of dying silently.
"""

from __future__ import annotations

import functools
import logging
import queue
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from ..errors import TelemetryError
from . import ingest, schema, topics
from .alerts import Alert, AlertEngine, AlertRules
from .mqtt import BrokerConfig
from .stores.base import Store
from .subscriber import Subscriber

log = logging.getLogger("edgeslm.collector")


@dataclass
class CollectorConfig:
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    fleet: str | None = None  # one fleet, or None for every fleet on the broker
    group: str | None = "edgeslm"  # shared-subscription group; None subscribes plainly (sees everything)
    client_id: str | None = None  # must be stable across restarts for the session to survive
    session_expiry_s: int = 7 * 24 * 3600  # how long the broker keeps our queue while we are away
    batch_size: int = 2000  # messages per store transaction (more = faster, later acks)
    batch_wait_s: float = 0.05  # commit a partial batch after this long
    receive_maximum: int = 20000  # unacknowledged messages the broker may have in flight to us (MQTT: <= 65535)
    max_payload_bytes: int = schema.MAX_PAYLOAD_BYTES  # larger messages are dead-lettered
    alerts: AlertRules | None = None  # None: no alert evaluation (run it on one collector per fleet)
    alert_every_s: float = 1.0  # how often alert rules are evaluated
    acks: bool = True  # publish end-to-end acks to the devices after each commit (off for views that store nothing)
    ack_every_s: float = 0.5  # acks of one device are gathered this long (one ack message, not one per batch)

    def __post_init__(self):
        if self.fleet is not None:
            topics.check_id(self.fleet, "fleet")
        if self.group is not None:
            topics.check_id(self.group, "share group")
        _check_range("batch size", self.batch_size, 1, 1_000_000)
        _check_range("receive maximum", self.receive_maximum, 1, 65535)
        _check_range("session expiry (s)", self.session_expiry_s, 0, 2**32 - 1)
        _check_range("max payload bytes", self.max_payload_bytes, 1, 256 * 1024 * 1024)
        if not (0 < self.batch_wait_s <= 60 and 0 < self.alert_every_s <= 3600 and 0 <= self.ack_every_s <= 60):
            raise TelemetryError("batch wait, alert and ack intervals must be > 0 (and at most 60 s / 1 h / 60 s)")
        if self.client_id is None:
            self.client_id = f"edgeslm-collector-{self.group or 'solo'}-{self.fleet or 'all'}-{socket.gethostname()}"


def _check_range(what: str, value: int, lo: int, hi: int) -> None:
    if type(value) is not int or not lo <= value <= hi:
        raise TelemetryError(f"{what} must be an integer from {lo} to {hi}, not {value!r}")


@dataclass
class CollectorStats:
    received: int = 0  # messages taken off the wire
    stored: int = 0  # new telemetry rows
    duplicates: int = 0  # telemetry the store already had (broker redelivery)
    status: int = 0
    events: int = 0
    dead: Counter = field(default_factory=Counter)  # reason -> count
    batches: int = 0
    store_errors: int = 0  # failed writes (retried while the store is down; bisected when the data is bad)
    lost: int = 0  # dead letters even the dead-letter table refused (logged, then dropped)
    alerts: int = 0
    acks: int = 0  # end-to-end ack messages published to devices
    first_at: float | None = None  # wall time the first message was taken for a batch
    last_commit_at: float | None = None  # wall time of the newest commit (throughput = received / span)


SUBACK_REASONS = {0x80: "unspecified error", 0x83: "implementation specific error", 0x87: "not authorized",
                  0x8F: "topic filter invalid", 0x91: "packet identifier in use", 0x97: "quota exceeded",
                  0x9E: "shared subscriptions not supported", 0xA1: "subscription identifiers not supported",
                  0xA2: "wildcard subscriptions not supported"}


def _guard(where: str):
    """Paho re-raises callback exceptions and its network thread dies: record them instead."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(self, *args, **kw):
            try:
                return fn(self, *args, **kw)
            except Exception as exc:
                self._fail(where, exc)

        return inner

    return wrap


class Collector:
    """Run with :meth:`start`/:meth:`stop` (background threads) or :meth:`run_forever`."""

    def __init__(self, config: CollectorConfig, store: Store, on_alert: Callable[[Alert], None] | None = None):
        self.config = config
        self.store = store
        self.on_alert = on_alert
        self.stats = CollectorStats()
        self.alerts = AlertEngine(config.alerts) if config.alerts and config.alerts.any else None
        from .promexport import FleetMetrics

        self.metrics = FleetMetrics(self, store)  # what /metrics serves (fleet collect --http-port)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._client = None
        self._acks_due: dict[tuple[str, str], list[int]] = {}  # handled seqs not yet acked to their device
        self._acks_at = 0.0  # monotonic time of the last ack flush
        self.subscribe_error: str | None = None  # the broker refused a subscription
        self.connect_error: str | None = None  # the broker refused the connection (CONNACK reason)
        self.error: str | None = None  # a thread of ours failed: the collector is not collecting

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "Collector":
        c = self.config
        # our own lean MQTT v5 client (subscriber.py): paho alone cost ~53 us of CPU per message
        self._client = Subscriber(c.broker, c.client_id, [(f, 1) for f in self._filters()], clean_start=False,
                                  session_expiry_s=c.session_expiry_s, receive_maximum=c.receive_maximum,
                                  on_connect=self._on_connect, on_subscribe=self._on_subscribe,
                                  on_messages=self._on_messages, on_disconnect=self._connected.clear,
                                  on_error=lambda exc: self._fail("network", exc))
        self._writer = threading.Thread(target=self._write_loop, name="edgeslm-collector-writer", daemon=True)
        self._writer.start()
        self._client.start()
        return self

    def wait_connected(self, timeout: float = 10.0) -> bool:
        """True once connected and subscribed; False after ``timeout`` or as soon as the broker refuses us."""
        deadline = time.monotonic() + timeout
        while not self._connected.wait(0.05):
            if self.connect_error or self.error or time.monotonic() > deadline:
                return False
        return True

    def check(self) -> None:
        """Raise TelemetryError if a thread of the collector failed (it is then not collecting)."""
        if self.error:
            raise TelemetryError(f"the collector stopped working: {self.error}")

    def stop(self, timeout: float = 10.0) -> None:
        """Commit and acknowledge what is in hand, then disconnect (the session stays on the broker).

        Returns within about ``timeout`` seconds even while the store is failing: what is not
        committed then is not acknowledged, and the broker delivers it again next time.
        """
        if self._client is None:
            return
        self._stop.set()
        if self._writer is not None:
            self._writer.join(timeout=timeout)
        self._client.disconnect()
        self._client = None

    def kill(self) -> None:
        """Drop the connection without committing or acknowledging (simulates a crash in tests)."""
        if self._client is None:
            return
        self._client.on_messages = None
        self._client.kill()
        self._stop.set()
        self._client = None

    def run_forever(self, status_every_s: float = 0.0, report: Callable[[CollectorStats], None] | None = None) -> None:
        """Collect until interrupted; raise TelemetryError if the collector stops working."""
        self.start()
        try:
            last = time.monotonic()
            while True:
                time.sleep(0.2)
                self.check()
                if report and status_every_s and time.monotonic() - last >= status_every_s:
                    last = time.monotonic()
                    report(self.stats)
        finally:
            self.stop()

    def _fail(self, where: str, exc: BaseException) -> None:
        self.error = f"{where} thread: {type(exc).__name__}: {exc}"
        log.critical("collector %s failed, nothing more is collected: %s", where, exc, exc_info=exc)

    # -- network thread --------------------------------------------------------------------
    def _filters(self) -> list[str]:
        c = self.config
        out = []
        for kind in ("telemetry", "events"):
            f = topics.fleet_filter(c.fleet, kind)
            out.append(topics.shared(c.group, f) if c.group else f)
        out.append(topics.fleet_filter(c.fleet, "status"))
        return out

    @_guard("network")
    def _on_connect(self, code: int, text: str):
        if code:
            self.connect_error = f"the broker at {self.config.broker.url} refused the collector: {text}"
            log.error("%s", self.connect_error)
            return
        self.connect_error = None

    @_guard("network")
    def _on_subscribe(self, reason_codes: list[int]):
        bad = [SUBACK_REASONS.get(rc, f"reason {rc}") for rc in reason_codes if rc > 2]
        if bad:
            self.subscribe_error = ", ".join(bad)
            log.error("subscription refused by the broker: %s", self.subscribe_error)
        self._connected.set()

    def _on_messages(self, items: list[tuple], generation: int) -> None:
        """One socket read's messages: (topic, payload, packet id, qos, received_at) each."""
        self._inbox.put((generation, items))

    # -- writer thread ---------------------------------------------------------------------
    def _write_loop(self) -> None:
        try:
            next_alert = time.monotonic()
            while True:
                items = self._take_batch()
                if items and not self._commit(items):
                    return  # stopped while the store was down
                if self.alerts is not None and time.monotonic() >= next_alert:
                    next_alert = time.monotonic() + self.config.alert_every_s
                    if not self._evaluate_alerts():
                        return
                stopping = self._stop.is_set() and self._inbox.empty() and self._leftover is None
                self._flush_acks(force=stopping)
                if stopping:
                    return
        except BaseException as exc:  # never die silently: the CLI sees .error and exits non-zero
            self._fail("writer", exc)

    def _take_batch(self) -> list[tuple[int, list[tuple]]]:
        """Up to ``batch_size`` messages as (connection generation, items) chunks, in arrival order."""
        c = self.config
        chunks: list[tuple[int, list[tuple]]] = []
        n = 0
        deadline = time.monotonic() + c.batch_wait_s
        while n < c.batch_size:
            if self._leftover is not None:
                chunk, self._leftover = self._leftover, None
            else:
                timeout = deadline - time.monotonic()
                try:
                    chunk = self._inbox.get(timeout=timeout) if timeout > 0 else self._inbox.get_nowait()
                except queue.Empty:
                    break
            gen, items = chunk
            room = c.batch_size - n
            if len(items) > room:  # keep the batch size exact: the rest opens the next batch
                self._leftover = (gen, items[room:])
                items = items[:room]
            chunks.append((gen, items))
            n += len(items)
        return chunks

    _leftover: tuple[int, list[tuple]] | None = None

    def _store_down(self, exc: BaseException, delay: float) -> None:
        self.stats.store_errors += 1
        log.error("store write failed (%s: %s); retrying in %.1f s, nothing acknowledged meanwhile",
                  type(exc).__name__, ingest.one_line(exc), delay)

    def _commit(self, chunks: list[tuple[int, list[tuple]]]) -> bool:
        """Store one batch, then PUBACK it and tell the devices; False if stopped while the store was down."""
        s = self.stats
        if s.first_at is None:
            s.first_at = time.time()
        items = chunks[0][1] if len(chunks) == 1 else [it for _, part in chunks for it in part]
        entries = ingest.to_entries(items, self.config.max_payload_bytes)
        if self.alerts is not None:
            for e in entries:
                if isinstance(e, schema.Message):
                    try:
                        self.alerts.observe(e, e.received_at)
                    except Exception:  # an alert bug must not cost the message (or the collector)
                        log.exception("alert rules failed on a message from %s/%s", e.fleet, e.device)
        res = ingest.write_entries(self.store, entries, self._stop, self._store_down)
        if res is None:
            return False
        s.received += len(items)
        s.batches += 1
        s.last_commit_at = time.time()
        s.stored += res.new
        s.duplicates += res.telemetry - res.new
        s.status += res.status
        s.events += res.events
        s.store_errors += res.store_errors
        s.lost += res.lost
        for d in res.dead:
            s.dead[d.reason] += 1
            log.warning("dead letter from %s: %s", d.topic, d.detail)
        try:
            self.metrics.observe([e for e in entries if isinstance(e, schema.Message)])
            self.metrics.tick(s.received)
        except Exception:  # metrics must never cost a message
            log.exception("updating the Prometheus metrics failed")
        client = self._client
        if client is not None:
            for gen, part in chunks:  # PUBACK on the connection each came on (else the broker resends it)
                client.ack([it[2] for it in part if it[3]], gen)
            if self.config.acks:
                for key, seqs in ingest.handled_seqs(entries).items():
                    self._acks_due.setdefault(key, []).extend(seqs)
        return True

    def _flush_acks(self, force: bool = False) -> None:
        """Tell each device which of its seqs are handled: one ack per device per ``ack_every_s``."""
        client = self._client
        if not self._acks_due or client is None:
            return
        if not force and time.monotonic() - self._acks_at < self.config.ack_every_s:
            return
        due, self._acks_due, self._acks_at = self._acks_due, {}, time.monotonic()
        now = time.time()
        for (fleet, device), seqs in due.items():
            body = schema.ack_body(fleet, device, now, ingest.to_ranges(seqs))
            client.publish(topics.topic(fleet, device, "acks"), schema.encode(body), 0)
            self.stats.acks += 1

    def _evaluate_alerts(self) -> bool:
        now = time.time()
        fired = self.alerts.evaluate(now)
        if not fired:
            return True
        entries: list[ingest.Entry] = []
        for alert in fired:
            body = schema.event_body(alert.fleet, alert.device, now, alert.name, alert.severity, alert.message,
                                     alert.id, "collector", alert.attributes())
            payload = schema.encode(body)
            t = topics.topic(alert.fleet, alert.device, "events")
            entries.append(schema.parse(t, payload, received_at=now))
            if self._client is not None:
                self._client.publish(t, payload, 1)
            if self.on_alert:
                self.on_alert(alert)
        self.stats.alerts += len(fired)
        return ingest.write_entries(self.store, entries, self._stop, self._store_down) is not None
