"""The device agent: aggregates generations, publishes telemetry, keeps a retained status.

::

    model = edgeslm.load("bundle/")            # or any object whose results carry GenerationMetrics
    agent = Agent(AgentConfig(fleet="demo", device="pi-01", broker=BrokerConfig.from_url("mqtt://hub")))
    agent.attach(model)                        # hooks Generator.listeners
    agent.start()
    model.generate("hello")                    # recorded; published once per interval
    agent.stop()                               # final flush, drain, retained "offline"

Delivery: every telemetry/event message goes into the on-disk :class:`DiskQueue` first and
leaves it only on the broker's successful PUBACK (MQTT v5, QoS 1). While the broker is
unreachable the queue grows (bounded); on reconnect it drains oldest first. A PUBACK with
reason 16 (*no matching subscribers*) means the broker dropped the message because no
collector session was subscribed at that moment -- e.g. right after a broker restart, since
Mosquitto 2.0 does not restore *shared* subscriptions from its persistence file, so they
exist again only once the collector has reconnected and resubscribed. Such messages stay in
the queue and are sent again with a backoff (1 s doubling to 10 s) until a collector takes
them. The broker holds the last will (retained ``online: false, reason: lost``); a clean stop
publishes ``reason: shutdown`` itself.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import TelemetryError
from . import schema, topics
from .buffer import DiskQueue
from .metrics import IntervalAggregator
from .mqtt import BrokerConfig, connect, make_client, reason_ok
from .system import SystemSampler

log = logging.getLogger("edgeslm.agent")

NO_MATCHING_SUBSCRIBERS = 16  # MQTT v5 PUBACK reason: accepted, but nobody was subscribed -> dropped


@dataclass
class AgentConfig:
    fleet: str  # fleet id: the second topic level; one ACL/collector group per fleet is typical
    device: str  # device id; also the MQTT username the ACL pattern %u matches
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    interval_s: float = 10.0  # one telemetry aggregate per interval (not per request)
    buffer_path: str | Path = ":memory:"  # on-disk queue file; ":memory:" loses the queue on restart
    buffer_max: int = 100_000  # messages kept while offline; older ones are dropped and counted
    inflight_window: int = 200  # unacknowledged messages on the wire at once while draining
    resend_after_s: float = 30.0  # republish a message whose PUBACK never came (store dedupes)
    unrouted_retry_s: tuple[float, float] = (1.0, 10.0)  # first and longest wait before resending after
    # a PUBACK "no matching subscribers" (no collector subscribed yet: kept in the queue, not lost)
    resource: dict[str, Any] = field(default_factory=dict)  # extra resource attributes to report

    def __post_init__(self):
        topics.check_id(self.fleet, "fleet")
        topics.check_id(self.device, "device")
        if self.interval_s <= 0:
            raise TelemetryError("interval_s must be > 0")


class Agent:
    """Publishes one device's telemetry; thread-safe ``record``; ``start``/``stop`` once each."""

    def __init__(self, config: AgentConfig, model: Any = None):
        self.config = config
        self.queue = DiskQueue(config.buffer_path, config.buffer_max)
        self.aggregator = IntervalAggregator()
        self.sampler = SystemSampler()
        self.resource: dict[str, Any] = {"service.name": "edgeslm-agent", "edgeslm.version": __version__,
                                         "host.name": socket.gethostname(), **config.resource}
        self.acked = 0  # messages the broker acknowledged
        self.rejected = 0  # messages the broker refused (e.g. ACL: reason 135); not retried
        self.unrouted = 0  # PUBACKs "no matching subscribers": nobody got the message; kept and resent
        self._acks: deque[tuple[int, int]] = deque()  # (mid, PUBACK reason code) from the network thread
        self._hold_until = 0.0  # monotonic time before which nothing is sent (no subscriber yet)
        self._unrouted_wait = config.unrouted_retry_s[0]
        self._inflight: dict[int, tuple[int, float]] = {}  # mid -> (queue row id, sent at)
        self._cursor = 0  # highest queue row id handed to paho
        self._connected = threading.Event()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = None
        self._model_lock = threading.Lock()
        self.model = None
        if model is not None:
            self.attach(model)

    # -- inference side ----------------------------------------------------------------------
    def attach(self, model: Any) -> None:
        """Record every generation of ``model`` (a LoadedModel, or anything with ``.generator.listeners``)."""
        self.model = model
        generator = getattr(model, "generator", model)
        generator.listeners.append(self.record)
        self.resource.update(describe_model(model))

    @property
    def model_lock(self) -> threading.Lock:
        """Held while the attached model generates; other request paths (the OpenAI server of
        ``edgeslm agent --openai``) take it too, since a Generator runs one call at a time."""
        return self._model_lock

    def record(self, result: Any) -> None:
        """Add one finished GenerationResult to the current interval."""
        self.aggregator.record(result)

    def record_error(self, error: BaseException | str) -> None:
        """Count one failed request (``error.type`` = the exception's class name)."""
        self.aggregator.record_error(error if isinstance(error, str) else type(error).__name__)

    def generate(self, prompt: Any, chat: bool = False, **kw: Any) -> Any:
        """Run one request on the attached model (serialized: Generators are single-threaded)."""
        if self.model is None:
            raise TelemetryError("no model attached: pass one to Agent(...) or call attach()")
        with self._model_lock:
            try:
                return self.model.chat(prompt, **kw) if chat else self.model.generate(prompt, **kw)
            except Exception as exc:
                self.record_error(exc)
                raise

    # -- messages --------------------------------------------------------------------------
    def topic(self, kind: str) -> str:
        return topics.topic(self.config.fleet, self.config.device, kind)

    def flush(self) -> int:
        """Close the current interval now: queue its telemetry message; return its seq."""
        interval = self.config.interval_s
        now = time.time()
        if self._last_flush is not None:
            interval = now - self._last_flush
        self._last_flush = now
        metrics = self.aggregator.take()
        metrics.update(self.sampler.sample())
        agent = {"buffered": len(self.queue), "dropped": self.queue.dropped, "rejected": self.rejected}
        c = self.config
        seq = self.queue.put(self.topic("telemetry"), lambda s: schema.encode(
            schema.telemetry_body(c.fleet, c.device, s, now, interval, metrics, self.resource, agent)))
        self._wake.set()
        return seq

    _last_flush: float | None = None

    def event(self, name: str, message: str, severity: str = "info", **attributes: Any) -> int:
        """Queue a one-off event (delivered like telemetry: buffered, at least once)."""
        c = self.config
        return self.queue.put(self.topic("events"), lambda s: schema.encode(schema.event_body(
            c.fleet, c.device, time.time(), name, severity, message, f"{c.device}:{s}", "agent",
            {"seq": s, **attributes})))

    def _status(self, online: bool, reason: str) -> bytes:
        c = self.config
        return schema.encode(schema.status_body(c.fleet, c.device, time.time(), online, reason, self.resource))

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "Agent":
        """Connect in the background (retrying while the broker is away) and start publishing."""
        if self._thread is not None:
            raise TelemetryError("agent already started")
        c = self.config
        client = make_client(c.broker, client_id=f"edgeslm-agent-{c.fleet}-{c.device}", max_inflight=c.inflight_window)
        client.will_set(self.topic("status"), self._status(False, "lost"), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client
        self._last_flush = time.time()
        connect(client, c.broker, clean_start=True)
        client.loop_start()
        self._thread = threading.Thread(target=self._run, name=f"edgeslm-agent-{c.device}", daemon=True)
        self._thread.start()
        return self

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return self._connected.wait(timeout)

    def wait_drained(self, timeout: float = 10.0) -> bool:
        """Block until the broker has acknowledged everything queued (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.queue) == 0:
                return True
            self._wake.set()
            time.sleep(0.02)
        return len(self.queue) == 0

    def stop(self, drain_timeout: float = 5.0) -> None:
        """Flush the last interval, drain what the broker accepts in time, publish offline, disconnect."""
        if self._thread is None:
            return
        self.flush()
        if self._connected.is_set():
            self.wait_drained(drain_timeout)
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=5)
        client = self._client
        if self._connected.is_set():
            info = client.publish(self.topic("status"), self._status(False, "shutdown"), qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=drain_timeout)
            except (RuntimeError, ValueError):
                pass
        client.disconnect()
        client.loop_stop()
        self._connected.clear()
        self._final_stats = self.stats()
        self.queue.close()
        self._thread = None

    _final_stats: dict[str, Any] | None = None

    def stats(self) -> dict[str, Any]:
        """connected, buffered, acked, dropped, rejected, unrouted, last_seq (kept after :meth:`stop`)."""
        if self._final_stats is not None:
            return dict(self._final_stats)
        return {"connected": self._connected.is_set(), "buffered": len(self.queue), "acked": self.acked,
                "dropped": self.queue.dropped, "rejected": self.rejected, "unrouted": self.unrouted,
                "last_seq": self.queue.last_seq}

    # -- paho callbacks (network thread) -----------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        if not reason_ok(reason_code):
            log.warning("broker %s refused the connection: %s", self.config.broker.url, reason_code)
            return
        client.publish(self.topic("status"), self._status(True, "connected"), qos=1, retain=True)
        self._reconnected = True  # paho resends in-flight messages itself: restart their resend clocks
        self._connected.set()
        self._wake.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None):
        self._connected.clear()

    def _on_publish(self, client, userdata, mid, reason_code, properties=None):
        self._acks.append((mid, int(getattr(reason_code, "value", reason_code))))
        self._wake.set()

    # -- the sender loop ------------------------------------------------------------------
    def _run(self) -> None:
        next_tick = time.monotonic() + self.config.interval_s
        while not self._stopping.is_set():
            self._wake.wait(timeout=min(0.5, max(0.0, next_tick - time.monotonic())))
            self._wake.clear()
            if time.monotonic() >= next_tick:
                self.flush()
                next_tick += self.config.interval_s
            try:
                self._settle_acks()
                if self._connected.is_set():
                    self._send()
            except Exception:  # keep publishing whatever one bad cycle did
                log.exception("agent sender cycle failed")

    def _settle_acks(self) -> None:
        done: list[int] = []
        while self._acks:
            mid, code = self._acks.popleft()
            entry = self._inflight.pop(mid, None)
            if entry is None:
                continue  # the status message, or a PUBACK for a message already resent
            if code == NO_MATCHING_SUBSCRIBERS:
                self._unrouted(entry[0])
                continue
            done.append(entry[0])
            if code == 0:
                self.acked += 1
                self._hold_until = 0.0  # someone is subscribed now: send what was held at once
                self._unrouted_wait = self.config.unrouted_retry_s[0]
            else:
                self.rejected += 1
                log.warning("broker refused a telemetry message (not retried)")
        self.queue.remove(done)

    def _unrouted(self, row: int) -> None:
        """The broker had no subscriber for queue row ``row`` and dropped it: keep it, resend later."""
        self.unrouted += 1
        self._cursor = min(self._cursor, row - 1)  # peek from here again once the hold is over
        now = time.monotonic()
        if self._hold_until <= now:  # one hold (and one log line) per burst of such PUBACKs
            log.warning("broker %s has no subscriber for %s (collector not subscribed yet?): "
                        "keeping %d message(s) buffered, resending in %.0f s", self.config.broker.url,
                        self.topic("telemetry"), len(self.queue), self._unrouted_wait)
            self._hold_until = now + self._unrouted_wait
            self._unrouted_wait = min(self._unrouted_wait * 2, self.config.unrouted_retry_s[1])

    _reconnected = False

    def _send(self) -> None:
        now = time.monotonic()
        if now < self._hold_until:
            return
        if self._reconnected:
            self._reconnected = False
            self._inflight = {mid: (row, now) for mid, (row, _) in self._inflight.items()}
        stale = [mid for mid, (_, t) in self._inflight.items() if now - t > self.config.resend_after_s]
        if stale:  # lost PUBACKs: forget them and send the rows again from the oldest
            for mid in stale:
                del self._inflight[mid]
            self._cursor = 0
        room = self.config.inflight_window - len(self._inflight)
        if room <= 0:
            return
        sending = {row for row, _ in self._inflight.values()}
        for row, topic, payload in self.queue.peek(self._cursor, room + len(sending)):
            self._cursor = max(self._cursor, row)
            if row in sending:
                continue
            info = self._client.publish(topic, payload, qos=1)
            if info.rc != 0 and info.rc != 4:  # 4 = not connected: paho keeps it and sends on reconnect
                self._cursor = row - 1
                break
            self._inflight[info.mid] = (row, now)
            room -= 1
            if room <= 0:
                break


def describe_model(model: Any) -> dict[str, Any]:
    """Resource attributes of a loaded bundle: id, manifest hash, runtime and its version."""
    out: dict[str, Any] = {}
    bundle = getattr(model, "bundle", None)
    manifest = getattr(bundle, "manifest", None) or {}
    if bundle is not None:
        import hashlib

        path = Path(getattr(bundle, "path", "."))
        out["edgeslm.bundle.id"] = manifest.get("name") or (manifest.get("spec") or {}).get("name") or path.name
        mfile = path / "manifest.json"
        if mfile.is_file():
            out["edgeslm.bundle.sha256"] = hashlib.sha256(mfile.read_bytes()).hexdigest()
        out["edgeslm.bundle.precision"] = manifest.get("precision")
    engine = getattr(model, "engine", None)
    runtime = getattr(engine, "name", "") or manifest.get("format")
    if runtime:
        out["edgeslm.runtime"] = runtime
        out["edgeslm.runtime.version"] = _runtime_version(runtime)
    return {k: v for k, v in out.items() if v is not None}


_RUNTIME_DISTS = {"onnx": "onnxruntime", "openvino": "openvino", "litert": "ai-edge-litert", "coreml": "coremltools"}


def _runtime_version(runtime: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(_RUNTIME_DISTS.get(runtime, runtime))
    except metadata.PackageNotFoundError:
        return None
