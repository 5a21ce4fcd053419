"""The collector: MQTT v5 subscriber that validates, batches and stores fleet telemetry.

* **Persistent session** (stable client id, ``clean_start=False``, session expiry): the
  broker queues what arrives while the collector is down and delivers it on return.
* **Shared subscription** ``$share/<group>/edgeslm/v1/<fleet>/+/telemetry`` (and events): N
  collectors in one group split a fleet. Status (retained) is a plain subscription, so every
  collector knows every device's online state.
* **At least once, stored once**: messages are acknowledged (manual PUBACK) only after the
  batch holding them is committed; the store ignores a (fleet, device, seq) it already has,
  so redelivery after a crash is harmless.
* **Never crashes on input**: anything malformed, oversized or of another schema version
  goes to the dead-letter table with a reason and is acknowledged (redelivering it would not
  fix it).
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from ..errors import TelemetryError
from . import schema, topics
from .alerts import Alert, AlertEngine, AlertRules
from .mqtt import BrokerConfig, connect, connect_properties, make_client, reason_ok
from .stores.base import Batch, DeadLetter, Store

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
    receive_maximum: int = 20000  # unacknowledged messages the broker may have in flight to us
    max_payload_bytes: int = schema.MAX_PAYLOAD_BYTES  # larger messages are dead-lettered
    alerts: AlertRules | None = None  # None: no alert evaluation (run it on one collector per fleet)
    alert_every_s: float = 1.0  # how often alert rules are evaluated

    def __post_init__(self):
        if self.fleet is not None:
            topics.check_id(self.fleet, "fleet")
        if self.client_id is None:
            self.client_id = f"edgeslm-collector-{self.group or 'solo'}-{self.fleet or 'all'}-{socket.gethostname()}"


@dataclass
class CollectorStats:
    received: int = 0  # messages taken off the wire
    stored: int = 0  # new telemetry rows
    duplicates: int = 0  # telemetry the store already had (broker redelivery)
    status: int = 0
    events: int = 0
    dead: Counter = field(default_factory=Counter)  # reason -> count
    batches: int = 0
    store_errors: int = 0  # failed commits (retried; nothing acknowledged until one succeeds)
    alerts: int = 0
    first_at: float | None = None  # wall time the first message was taken for a batch
    last_commit_at: float | None = None  # wall time of the newest commit (throughput = received / span)


class Collector:
    """Run with :meth:`start`/:meth:`stop` (background threads) or :meth:`run_forever`."""

    def __init__(self, config: CollectorConfig, store: Store, on_alert: Callable[[Alert], None] | None = None):
        self.config = config
        self.store = store
        self.on_alert = on_alert
        self.stats = CollectorStats()
        self.alerts = AlertEngine(config.alerts) if config.alerts and config.alerts.any else None
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._client = None
        self.subscribe_error: str | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "Collector":
        c = self.config
        client = make_client(c.broker, client_id=c.client_id)
        client.manual_ack_set(True)  # PUBACK only after the store commit
        client.on_connect = self._on_connect
        client.on_disconnect = lambda *a, **k: self._connected.clear()
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client
        connect(client, c.broker, clean_start=False,
                properties=connect_properties(c.session_expiry_s, c.receive_maximum))
        self._writer = threading.Thread(target=self._write_loop, name="edgeslm-collector-writer", daemon=True)
        self._writer.start()
        client.loop_start()
        return self

    def wait_connected(self, timeout: float = 10.0) -> bool:
        """True once connected and subscribed."""
        return self._connected.wait(timeout)

    def stop(self) -> None:
        """Commit and acknowledge what is in hand, then disconnect (the session stays on the broker)."""
        if self._client is None:
            return
        self._stop.set()
        if self._writer is not None:
            self._writer.join(timeout=30)
        self._client.disconnect()
        self._client.loop_stop()
        self._client = None

    def kill(self) -> None:
        """Drop the connection without committing or acknowledging (simulates a crash in tests)."""
        if self._client is None:
            return
        self._client.on_message = None
        self._client.loop_stop()
        self._client.socket() and self._client.socket().close()
        self._stop.set()
        self._client = None

    def run_forever(self, status_every_s: float = 0.0, report: Callable[[CollectorStats], None] | None = None) -> None:
        self.start()
        try:
            while True:
                time.sleep(status_every_s or 3600)
                if report:
                    report(self.stats)
        finally:
            self.stop()

    # -- network thread --------------------------------------------------------------------
    def _filters(self) -> list[str]:
        c = self.config
        out = []
        for kind in ("telemetry", "events"):
            f = topics.fleet_filter(c.fleet, kind)
            out.append(topics.shared(c.group, f) if c.group else f)
        out.append(topics.fleet_filter(c.fleet, "status"))
        return out

    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        if not reason_ok(reason_code):
            log.error("broker %s refused the collector: %s", self.config.broker.url, reason_code)
            return
        client.subscribe([(f, 1) for f in self._filters()])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties=None):
        bad = [str(rc) for rc in reason_codes if getattr(rc, "value", rc) > 2]
        if bad:
            self.subscribe_error = ", ".join(bad)
            log.error("subscription refused by the broker: %s", self.subscribe_error)
        self._connected.set()

    def _on_message(self, client, userdata, msg):
        self._inbox.put((msg.topic, msg.payload, msg.mid, msg.qos))

    # -- writer thread ---------------------------------------------------------------------
    def _write_loop(self) -> None:
        next_alert = time.monotonic()
        while True:
            items = self._take_batch()
            if items:
                self._commit(items)
            if self.alerts is not None and time.monotonic() >= next_alert:
                next_alert = time.monotonic() + self.config.alert_every_s
                self._evaluate_alerts()
            if self._stop.is_set() and self._inbox.empty():
                return

    def _take_batch(self) -> list[tuple]:
        c = self.config
        items: list[tuple] = []
        deadline = time.monotonic() + c.batch_wait_s
        while len(items) < c.batch_size:
            timeout = deadline - time.monotonic()
            try:
                items.append(self._inbox.get(timeout=timeout) if timeout > 0 else self._inbox.get_nowait())
            except queue.Empty:
                break
        return items

    def _commit(self, items: list[tuple]) -> None:
        batch = Batch()
        now = time.time()
        if self.stats.first_at is None:
            self.stats.first_at = now
        for topic, payload, _, _ in items:
            if not payload and topic.endswith("/status"):
                continue  # an empty retained message clears a device's status: not an error
            try:
                msg = schema.parse(topic, payload, self.config.max_payload_bytes)
            except schema.MessageError as exc:
                batch.dead.append(DeadLetter(topic, exc.reason, str(exc), len(payload), bytes(payload[:1024]), now))
                continue
            getattr(batch, "events" if msg.kind == "event" else msg.kind).append(msg)
            if self.alerts is not None:
                self.alerts.observe(msg, now)
        delay = 0.2
        while True:
            try:
                new = self.store.write(batch)
                break
            except TelemetryError:
                raise
            except Exception as exc:  # the database went away: keep the messages unacknowledged and retry
                self.stats.store_errors += 1
                log.error("store write failed (%s); retrying in %.1f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
        s = self.stats
        s.received += len(items)
        s.batches += 1
        s.last_commit_at = time.time()
        s.stored += new
        s.duplicates += len(batch.telemetry) - new
        s.status += len(batch.status)
        s.events += len(batch.events)
        for d in batch.dead:
            s.dead[d.reason] += 1
            log.warning("dead letter from %s: %s", d.topic, d.detail)
        client = self._client
        if client is not None:
            for _, _, mid, qos in items:
                if qos > 0:
                    client.ack(mid, qos)

    def _evaluate_alerts(self) -> None:
        fired = self.alerts.evaluate(time.time())
        if not fired:
            return
        batch = Batch()
        for alert in fired:
            body = schema.event_body(alert.fleet, alert.device, time.time(), alert.name, alert.severity, alert.message,
                                     alert.id, "collector", alert.attributes())
            payload = schema.encode(body)
            t = topics.topic(alert.fleet, alert.device, "events")
            batch.events.append(schema.parse(t, payload))
            if self._client is not None:
                self._client.publish(t, payload, qos=1)
            if self.on_alert:
                self.on_alert(alert)
        self.stats.alerts += len(fired)
        self.store.write(batch)
