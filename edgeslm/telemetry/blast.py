"""A load generator that is not the bottleneck: simulated devices' telemetry over a raw MQTT v5 socket.

The simulator (:mod:`.simulate`) publishes through paho, ~2,500 msg/s from two processes on
this project's machine: a benchmark of a 10,000+ msg/s collector then measures the publishers.
This sends the same kind of messages (each device's body encoded once, its seq and ts filled in
per message, QoS 1) with :mod:`.wire`: PUBLISH
packets written in batches, PUBACKs read in bulk, at most ``window`` unacknowledged. Used by
``benchmarks/telemetry_ingest.py``; not a device (no retries, no store-and-forward).
"""

from __future__ import annotations

import random
import socket
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

from . import schema, topics, wire
from .simulate import SimConfig, SimResult, _resource, device_id, fake_metrics


def _read(sock: socket.socket, buf: bytearray, res: SimResult, block: bool) -> int:
    """Read what is there; return the number of PUBACKs taken (counted into ``res``)."""
    sock.setblocking(block)
    try:
        data = sock.recv(1 << 16)
    except (BlockingIOError, InterruptedError):
        return 0
    finally:
        sock.setblocking(True)
    if not data:
        raise ConnectionError("the broker closed the connection")
    buf += data
    pubs, others = [], []
    used = wire.split_packets(buf, len(buf), pubs, others, 0.0, {})
    del buf[:used]
    acks = 0
    for kind, _, body in others:
        if kind == wire.PUBACK:
            code = body[2] if len(body) > 2 else 0
            if code == 16:
                res.unrouted += 1
            elif code < 128:
                res.acked += 1
            else:
                res.refused += 1
            acks += 1
    return acks


_SEQ, _TS = 987654321987, 1234567890.125  # placeholders, cut out of the encoded body


def _templates(cfg: SimConfig) -> list[tuple[str, tuple[bytes, bytes, bytes]]]:
    """Per device: its topic and its telemetry body encoded once, split around seq and ts (cheap to send)."""
    rng = random.Random(cfg.seed * 100003 + cfg.first_device)
    out = []
    for i in range(cfg.first_device, cfg.first_device + cfg.devices):
        dev = device_id(cfg, i)
        body = schema.encode(schema.telemetry_body(cfg.fleet, dev, _SEQ, _TS, 1.0, fake_metrics(rng, 0.5 + 0.5 * (i % 2)),
                                                   _resource(i), {"buffered": 0, "dropped": 0, "rejected": 0}))
        head, rest = body.split(str(_SEQ).encode(), 1)
        mid, tail = rest.split(str(_TS).encode(), 1)
        out.append((topics.topic(cfg.fleet, dev, "telemetry"), (head, mid, tail)))
    return out


def _run(cfg: SimConfig, window: int = 4000) -> SimResult:
    res = SimResult()
    b = cfg.broker
    sock = socket.create_connection((b.host, b.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(wire.connect(f"edgeslm-blast-{cfg.first_device}-{time.time_ns()}", 60, True, 0, 0, b.username,
                              b.password))
    buf = bytearray()
    while not buf or len(buf) < 4:
        buf += sock.recv(64)
    del buf[:2 + buf[1]]  # CONNACK (checked by the PUBACKs that follow)
    devices = _templates(cfg)
    t0, inflight, pid, out = time.monotonic(), 0, 0, bytearray()
    for tick in range(cfg.messages or 1):
        seq, ts = str(cfg.start_seq + tick).encode(), f"{time.time():.3f}".encode()
        for topic, (head, mid, tail) in devices:
            pid = pid % 65535 + 1
            out += wire.publish(topic, b"".join((head, seq, mid, ts, tail)), 1, False, pid)
            res.sent += 1
            inflight += 1
            if len(out) > 1 << 16:
                sock.sendall(out)
                out.clear()
                inflight -= _read(sock, buf, res, False)
            while inflight >= window:
                if out:
                    sock.sendall(out)
                    out.clear()
                inflight -= _read(sock, buf, res, True)
    sock.sendall(out)
    while inflight > 0:
        inflight -= _read(sock, buf, res, True)
    res.elapsed_s = time.monotonic() - t0
    sock.sendall(wire.disconnect())
    sock.close()
    return res


def blast(cfg: SimConfig) -> SimResult:
    """``cfg.messages`` per device from ``cfg.devices`` devices split over ``cfg.processes`` processes."""
    per = [cfg.devices // cfg.processes + (1 if k < cfg.devices % cfg.processes else 0) for k in range(cfg.processes)]
    parts, start = [], cfg.first_device
    for n in per:
        if n:
            parts.append(replace(cfg, devices=n, first_device=start, processes=1))
            start += n
    total = SimResult()
    with ProcessPoolExecutor(max_workers=len(parts)) as pool:
        for r in pool.map(_run, parts):
            total = total.merge(r)
    return total
