"""A fleet simulator: many fake devices publishing v1 telemetry, for demos and load tests.

Devices share ``connections`` MQTT clients (thousands of sockets from one laptop would test
the laptop, not the collector); each device has its own topic, sequence numbers, status and a
plausible model of an SLM box: TTFT around 120 ms with a tail, ~25 tok/s decode, a
rare error, temperature drifting with load. ``processes`` > 1 forks publishers so the
simulator is not the bottleneck of a benchmark.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from .. import __version__
from ..errors import TelemetryError
from . import schema, topics
from .mqtt import BrokerConfig, connect, make_client
from .outbox import NO_MATCHING_SUBSCRIBERS


@dataclass
class SimConfig:
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    fleet: str = "demo"
    devices: int = 10  # simulated devices
    rate: float = 1.0  # telemetry messages per second per device; 0 = as fast as possible
    duration_s: float | None = 10.0  # stop after this long (None: run until messages or Ctrl-C)
    messages: int | None = None  # or stop after this many messages per device
    connections: int = 1  # MQTT clients the devices share (per process)
    processes: int = 1  # publisher processes; devices are split between them
    prefix: str = "sim-"  # device ids are prefix + zero-padded index
    first_device: int = 0  # index of the first device (processes get disjoint ranges)
    start_seq: int = 0  # first sequence number of every device
    status: bool = True  # publish retained online/offline status per device
    seed: int = 0
    inflight: int = 2000  # unacknowledged QoS 1 messages per connection

    def __post_init__(self):
        topics.check_id(self.fleet, "fleet")
        if self.devices < 1 or self.connections < 1 or self.processes < 1:
            raise TelemetryError("devices, connections and processes must be at least 1")
        if self.rate < 0:
            raise TelemetryError("rate must be >= 0 messages per second per device")
        if self.duration_s is None and self.messages is None:
            raise TelemetryError("give a duration or a message count, or the simulation never ends")


@dataclass
class SimResult:
    sent: int = 0  # messages handed to the client (each once)
    acked: int = 0  # PUBACKs with success
    refused: int = 0  # PUBACKs with an error reason (ACL, quota)
    unrouted: int = 0  # PUBACKs "no matching subscribers" (16): the broker dropped them
    elapsed_s: float = 0.0

    def merge(self, other: "SimResult") -> "SimResult":
        return SimResult(self.sent + other.sent, self.acked + other.acked, self.refused + other.refused,
                         self.unrouted + other.unrouted, max(self.elapsed_s, other.elapsed_s))


def device_id(cfg: SimConfig, index: int) -> str:
    return f"{cfg.prefix}{index:05d}"


def fake_metrics(rng: random.Random, load: float) -> dict[str, Any]:
    """One interval of plausible SLM-device metrics; ``load`` in 0..1 shifts latency and heat."""
    n = rng.randint(1, 12)
    ttft = sorted(max(0.02, rng.gauss(0.12 + 0.2 * load, 0.03)) for _ in range(n))
    tpot = sorted(max(0.01, rng.gauss(0.04 + 0.02 * load, 0.005)) for _ in range(n))
    dur = [t + 64 * p for t, p in zip(ttft, tpot)]
    errors = 1 if rng.random() < 0.02 else 0
    return {
        schema.REQUEST_DURATION: schema.summarize(dur),
        schema.TTFT: schema.summarize(ttft),
        schema.TPOT: schema.summarize(tpot),
        schema.DECODE_RATE: schema.summarize([1.0 / p for p in tpot]),
        schema.TOKEN_USAGE: {"input": n * rng.randint(20, 200), "output": n * 64},
        schema.ERRORS: {"total": errors, "by_type": {"GenerationError": errors} if errors else {}},
        schema.CPU: round(min(1.0, 0.2 + 0.7 * load + rng.random() * 0.05), 4),
        schema.MEMORY_USAGE: int(1.5e9 + 5e8 * load),
        schema.MEMORY_UTIL: round(0.35 + 0.1 * load, 4),
        schema.PROCESS_MEMORY: int(4.2e8),
        schema.TEMPERATURE: round(45 + 25 * load + rng.random(), 1),
    }


def _resource(i: int) -> dict[str, Any]:
    return {"service.name": "edgeslm-simulator", "edgeslm.version": __version__, "host.name": f"sim-host-{i}",
            "edgeslm.bundle.id": "smollm2-135m-int8" if i % 4 else "smollm2-360m-int8",
            "edgeslm.bundle.sha256": ("a1" if i % 4 else "b2") * 32, "edgeslm.runtime": "onnx",
            "edgeslm.runtime.version": "1.20.1"}


class _Acks:
    """Counts PUBACKs into a SimResult from paho's thread; ``done`` once all sent are answered."""

    def __init__(self, res: SimResult):
        self.res, self.lock, self.done, self.finished = res, threading.Lock(), threading.Event(), False

    def on_publish(self, client, userdata, mid, reason_code, properties=None):
        code = int(getattr(reason_code, "value", reason_code))
        with self.lock:
            if code == NO_MATCHING_SUBSCRIBERS:
                self.res.unrouted += 1
            elif code < 128:
                self.res.acked += 1
            else:
                self.res.refused += 1
            self._check()

    def sent(self, n: int = 1, last: bool = False) -> None:
        with self.lock:
            self.res.sent += n
            self.finished = self.finished or last
            self._check()

    def _check(self) -> None:  # under the lock
        r = self.res
        if self.finished and r.acked + r.refused + r.unrouted >= r.sent:
            self.done.set()


def _run_connection(cfg: SimConfig, indices: list[int], conn_no: int, stop: threading.Event) -> SimResult:
    """One MQTT connection publishing for the devices ``indices``: status, telemetry ticks, status."""
    res = SimResult()
    acks = _Acks(res)
    client = make_client(cfg.broker, client_id=f"edgeslm-sim-{cfg.fleet}-{cfg.first_device}-{conn_no}-{time.time_ns()}",
                         max_inflight=cfg.inflight)
    client.on_publish = acks.on_publish
    connect(client, cfg.broker, clean_start=True, wait=True)
    client.loop_start()
    ids = [device_id(cfg, i) for i in indices]
    t0 = time.monotonic()
    try:
        if cfg.status:
            _publish_status(client, cfg, indices, ids, online=True)
        _publish_telemetry(client, cfg, indices, ids, stop, acks, t0)
        if cfg.status:
            _publish_status(client, cfg, indices, ids, online=False)
        acks.sent(2 * len(ids) if cfg.status else 0, last=True)
        acks.done.wait(timeout=60)
    finally:
        res.elapsed_s = time.monotonic() - t0
        client.disconnect()
        client.loop_stop()
    if cfg.status:  # report telemetry only
        res.sent -= 2 * len(ids)
        res.acked = max(0, res.acked - 2 * len(ids))
    return res


def _publish_status(client, cfg: SimConfig, indices: list[int], ids: list[str], online: bool) -> None:
    reason = "connected" if online else "shutdown"
    for i, dev in zip(indices, ids):
        client.publish(topics.topic(cfg.fleet, dev, "status"), schema.encode(schema.status_body(
            cfg.fleet, dev, time.time(), online, reason, _resource(i))), qos=1, retain=True)


def _publish_telemetry(client, cfg: SimConfig, indices: list[int], ids: list[str], stop: threading.Event,
                       acks: _Acks, t0: float) -> None:
    """One telemetry message per device per tick, at ``cfg.rate`` ticks/s, until a limit or ``stop``."""
    rng = random.Random(cfg.seed * 100003 + indices[0])
    interval = 1.0 / cfg.rate if cfg.rate > 0 else 0.0
    templates = {i: _resource(i) for i in indices}
    # a pool of pre-drawn intervals per load level keeps the simulator cheap per message
    pools = {(load, k): [fake_metrics(rng, load * (0.6 + 0.4 * k / 4)) for _ in range(16)]
             for load in (0.5, 1.0) for k in range(5)}
    tick = 0
    while not stop.is_set():
        if cfg.messages is not None and tick >= cfg.messages:
            break
        if cfg.duration_s is not None and time.monotonic() - t0 >= cfg.duration_s:
            break
        now = time.time()
        load = 0.5 + 0.5 * ((tick // 30) % 2)  # alternate calm and busy phases
        for i, dev in zip(indices, ids):
            pool = pools[(load, i % 5)]
            body = schema.telemetry_body(cfg.fleet, dev, cfg.start_seq + tick, now, interval or 1.0,
                                         pool[rng.randrange(len(pool))], templates[i],
                                         {"buffered": 0, "dropped": 0, "rejected": 0})
            publish_once(client, topics.topic(cfg.fleet, dev, "telemetry"), schema.encode(body), stop)
            acks.sent()
        tick += 1
        if interval:
            delay = t0 + tick * interval - time.monotonic()
            if delay > 0:
                stop.wait(delay)


def publish_once(client, topic: str, payload: bytes, stop: threading.Event) -> None:
    """Hand one QoS 1 message to paho exactly once.

    ``MQTT_ERR_NO_CONN`` (4) does not mean "not taken": paho keeps the message and sends it when
    it has reconnected. Publishing again on it (as the simulator once did, every millisecond
    while the broker restarted) queued one more copy per try: 400 messages became ~20,000
    PUBACKs and ~20,000 duplicates in the store. Only ``MQTT_ERR_QUEUE_SIZE`` means the message
    was not queued (paho's own queue is full) and must be handed over again.
    """
    from paho.mqtt.enums import MQTTErrorCode

    while True:
        info = client.publish(topic, payload, qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_QUEUE_SIZE or stop.is_set():
            return
        time.sleep(0.001)  # paho's queue is full: let the network thread drain it


def _run_process(cfg: SimConfig, stop: threading.Event | None = None) -> SimResult:
    stop = stop or threading.Event()
    indices = list(range(cfg.first_device, cfg.first_device + cfg.devices))
    groups = [indices[k::cfg.connections] for k in range(cfg.connections) if indices[k::cfg.connections]]
    results: list[SimResult] = [SimResult() for _ in groups]
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            results[k] = _run_connection(cfg, groups[k], k, stop)
        except BaseException as exc:  # reported after join
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(len(groups))]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(timeout=0.2)
    except KeyboardInterrupt:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    if errors:
        raise TelemetryError(f"simulator could not publish to {cfg.broker.url}: {errors[0]}")
    total = SimResult()
    for r in results:
        total = total.merge(r)
    return total


def simulate(cfg: SimConfig, stop: threading.Event | None = None) -> SimResult:
    """Run the simulation and return what was sent and acknowledged (all processes summed)."""
    if cfg.processes == 1:
        return _run_process(cfg, stop)
    per = [cfg.devices // cfg.processes + (1 if k < cfg.devices % cfg.processes else 0) for k in range(cfg.processes)]
    parts, start = [], cfg.first_device
    for k, n in enumerate(per):
        if n:
            parts.append(replace(cfg, devices=n, first_device=start, processes=1, seed=cfg.seed + k))
            start += n
    total = SimResult()
    with ProcessPoolExecutor(max_workers=len(parts)) as pool:
        for r in pool.map(_run_process, parts):
            total = total.merge(r)
    return total
