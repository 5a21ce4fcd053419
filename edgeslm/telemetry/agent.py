"""The device agent: aggregates generations, publishes telemetry, keeps a retained status.

::

    model = edgeslm.load("bundle/")            # or any object whose results carry GenerationMetrics
    agent = Agent(AgentConfig(fleet="demo", device="pi-01", broker=BrokerConfig.from_url("mqtt://hub")))
    agent.attach(model)                        # hooks Generator.listeners
    agent.start()
    model.generate("hello")                    # recorded; published once per interval
    agent.stop()                               # final flush, drain, retained "offline"

Delivery: every telemetry/event message goes into the on-disk :class:`DiskQueue` first and
leaves it only when a collector acknowledges its sequence number end to end (``acks`` topic,
published after the collector's store commit), not on the broker's PUBACK: see
:mod:`.outbox` for why (a live view makes the broker answer PUBACK 0 to messages no collector
got) and how lost ones are found and sent again. While the broker is unreachable the queue
grows (bounded); on reconnect it drains oldest first. The broker holds the last will
(retained ``online: false, reason: lost``); a clean stop publishes ``reason: shutdown`` itself.
"""

from __future__ import annotations

import json
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
from .outbox import NO_MATCHING_SUBSCRIBERS, Outbox  # noqa: F401  (re-exported)
from .system import SystemSampler

log = logging.getLogger("edgeslm.agent")
MAX_ACK_RANGES = 10_000  # an ack message with more ranges is ignored


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
    end_to_end: bool = True  # keep a message until a collector acks it (False: until the broker's PUBACK)
    ack_grace_s: float = 5.0  # collectors may ack out of order by this much before a gap counts as a loss
    probe_after_s: tuple[float, float] = (30.0, 600.0)  # no ack this long: resend the oldest (doubling)
    resource: dict[str, Any] = field(default_factory=dict)  # extra resource attributes to report

    def __post_init__(self):
        topics.check_id(self.fleet, "fleet")
        topics.check_id(self.device, "device")
        if not self.interval_s > 0:
            raise TelemetryError("interval_s must be > 0")
        if type(self.buffer_max) is not int or self.buffer_max < 1 or not 1 <= self.inflight_window <= 65535:
            raise TelemetryError("buffer_max must be >= 1 and inflight_window 1..65535")


class Agent:
    """Publishes one device's telemetry; thread-safe ``record``; ``start``/``stop`` once each."""

    def __init__(self, config: AgentConfig, model: Any = None):
        self.config = config
        self.queue = DiskQueue(config.buffer_path, config.buffer_max)
        self.aggregator = IntervalAggregator()
        self.sampler = SystemSampler()
        self.resource: dict[str, Any] = {"service.name": "edgeslm-agent", "edgeslm.version": __version__,
                                         "host.name": socket.gethostname(), **config.resource}
        self.outbox = Outbox(self.queue, self._publish, window=config.inflight_window,
                             resend_after_s=config.resend_after_s, unrouted_retry_s=config.unrouted_retry_s,
                             end_to_end=config.end_to_end, ack_grace_s=config.ack_grace_s,
                             probe_after_s=config.probe_after_s,
                             where=f"{config.broker.url} {topics.topic(config.fleet, config.device, 'telemetry')}")
        self._acks: deque[tuple[int, int]] = deque()  # (mid, PUBACK reason code) from the network thread
        self._delivered: deque[list[tuple[int, int]]] = deque()  # collector acks (seq ranges), network thread
        self._connected = threading.Event()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = None
        self._model_lock = threading.Lock()
        self.model = None
        self.deployer = None  # ota.device.Deployer when model updates are on (use_deployer)
        if model is not None:
            self.attach(model)

    # -- inference side ----------------------------------------------------------------------
    def attach(self, model: Any) -> None:
        """Record every generation of ``model`` (a LoadedModel, or anything with ``.generator.listeners``)."""
        self.model = model
        generator = getattr(model, "generator", model)
        generator.listeners.append(self.record)
        self.resource.update(describe_model(model))

    def replace_model(self, model: Any) -> Any:
        """Serve ``model`` from now on (a model update); returns the old one, which nothing uses any more."""
        with self._model_lock:
            old = self.model
            gen = getattr(old, "generator", old)
            if gen is not None and self.record in getattr(gen, "listeners", []):
                gen.listeners.remove(self.record)
            for key in [k for k in self.resource if k.startswith(("edgeslm.bundle.", "edgeslm.runtime"))]:
                del self.resource[key]
            self.attach(model)
        client = self._client
        if client is not None and self._connected.is_set():  # the retained status names the new bundle
            client.publish(self.topic("status"), self._status(True, "connected"), qos=1, retain=True)
        return old

    def use_deployer(self, deployer: Any) -> None:
        """Take signed model updates from this device's commands topic (see :mod:`.ota.device`)."""
        self.deployer = deployer
        deployer.switch = self.replace_model
        deployer.lock = self._model_lock

    @property
    def model_lock(self) -> threading.Lock:
        """Held while the attached model generates; other request paths (the OpenAI server of
        ``edgeslm agent --openai``) take it too, since a Generator runs one call at a time."""
        return self._model_lock

    def record(self, result: Any) -> None:
        """Add one finished GenerationResult to the current interval."""
        self.aggregator.record(result)
        if self.deployer is not None:
            self.deployer.observe(result)  # recent speed of this bundle: the baseline of the next update

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
        return self.queue.put(self.topic("events"), lambda s: schema.encode(schema.event_seq(schema.event_body(
            c.fleet, c.device, time.time(), name, severity, message, f"{c.device}:{s}", "agent",
            {"seq": s, **attributes}), s)))

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
        client.on_message = self._on_message
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

    @property
    def acked(self) -> int:
        """Messages the broker acknowledged (PUBACK)."""
        return self.outbox.acked

    def stats(self) -> dict[str, Any]:
        """connected, buffered, acked (broker), delivered (collector, end to end), awaiting, dropped,
        rejected, unrouted, resent, last_seq (kept after :meth:`stop`)."""
        if self._final_stats is not None:
            return dict(self._final_stats)
        o = self.outbox
        return {"connected": self._connected.is_set(), "buffered": len(self.queue), "acked": o.acked,
                "delivered": o.delivered, "awaiting": o.awaiting, "dropped": self.queue.dropped,
                "rejected": o.rejected, "unrouted": o.unrouted, "resent": o.resent, "last_seq": self.queue.last_seq}

    @property
    def rejected(self) -> int:
        return self.outbox.rejected

    # -- paho callbacks (network thread) -----------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        if not reason_ok(reason_code):
            log.warning("broker %s refused the connection: %s", self.config.broker.url, reason_code)
            return
        client.publish(self.topic("status"), self._status(True, "connected"), qos=1, retain=True)
        if self.config.end_to_end:
            client.subscribe(self.topic("acks"), qos=1)
        if self.deployer is not None:  # retained: the newest command comes at once, also after an outage
            client.subscribe(self.topic("commands"), qos=1)
        self._reconnected = True  # paho resends in-flight messages itself: restart their resend clocks
        self._connected.set()
        self._wake.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None):
        self._connected.clear()

    def _on_publish(self, client, userdata, mid, reason_code, properties=None):
        self._acks.append((mid, int(getattr(reason_code, "value", reason_code))))
        self._wake.set()

    def _on_message(self, client, userdata, msg):
        if self.deployer is not None and msg.topic.endswith("/commands"):
            if msg.payload:  # an empty retained message clears the topic: nothing to do
                self.deployer.submit(msg.payload)
            return
        ranges = parse_ack(msg.payload, self.config.fleet, self.config.device)
        if ranges:
            self._delivered.append(ranges)
            self._wake.set()

    # -- the sender loop ------------------------------------------------------------------
    def _publish(self, topic: str, payload: bytes) -> tuple[int, int]:
        info = self._client.publish(topic, payload, qos=1)
        return info.rc, info.mid

    def _run(self) -> None:
        next_tick = time.monotonic() + self.config.interval_s
        while not self._stopping.is_set():
            self._wake.wait(timeout=min(0.5, max(0.0, next_tick - time.monotonic())))
            self._wake.clear()
            if time.monotonic() >= next_tick:
                self.flush()
                next_tick += self.config.interval_s
            try:
                self._settle()
            except Exception:  # keep publishing whatever one bad cycle did
                log.exception("agent sender cycle failed")

    def _settle(self) -> None:
        now = time.monotonic()
        while self._acks:
            self.outbox.puback(*self._acks.popleft(), now)
        while self._delivered:
            self.outbox.collector_acked(self._delivered.popleft(), now)
        if self._connected.is_set():
            if self._reconnected:
                self._reconnected = False
                self.outbox.reconnected(now)
            self.outbox.pump(now)

    _reconnected = False


def parse_ack(payload: bytes, fleet: str, device: str) -> list[tuple[int, int]]:
    """The seq ranges of a collector's ack for this device; [] for anything else (never raises)."""
    try:
        body = json.loads(payload)
        if (type(body) is not dict or body.get("kind") != "ack" or body.get("fleet") != fleet
                or body.get("device") != device or type(body.get("seqs")) is not list
                or len(body["seqs"]) > MAX_ACK_RANGES):
            return []
        out = []
        for pair in body["seqs"]:
            first, last = pair
            if type(first) is int and type(last) is int and 0 <= first <= last < 2**63:
                out.append((first, last))
        return out
    except (ValueError, TypeError, RecursionError):
        return []


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


def _runtime_version(runtime: str) -> str | None:
    """The version of the package the format's plugin names as its runtime (FormatInfo.runtime)."""
    from importlib import metadata

    from ..plugins import format_info

    info = format_info(runtime)
    try:
        return metadata.version(info.runtime if info and info.runtime else runtime)
    except metadata.PackageNotFoundError:
        return None
