"""The telemetry wire format, version 1 (documented with examples in docs/telemetry.md).

Three message kinds, one JSON object each, all carrying ``schema_version``, ``kind``,
``fleet``, ``device`` and ``ts`` (unix seconds, float):

* ``telemetry`` — one aggregate per interval (not one message per request), with a per-device
  ``seq`` that only ever increases; the store is idempotent on (fleet, device, seq).
* ``status``    — retained; ``online`` true/false plus the device's resource description.
* ``event``     — something that happened once (an alert firing or resolving, an agent drop
  report); ``id`` makes redelivery harmless.

Metric names follow the OpenTelemetry GenAI and system semantic conventions where one exists
(``gen_ai.server.time_to_first_token``, ``system.cpu.utilization``, ``hw.temperature`` ...);
the few without one carry an ``edgeslm.`` prefix. Readers refuse a newer ``schema_version``
with a clear reason instead of guessing (STYLE 11).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from ..errors import TelemetryError
from . import topics

SCHEMA_VERSION = 1
#: the collector dead-letters anything larger; a v1 telemetry message is ~1.5 KB
MAX_PAYLOAD_BYTES = 64 * 1024

# -- metric names (OpenTelemetry semantic conventions where one exists) ---------------------
REQUEST_DURATION = "gen_ai.server.request.duration"  # seconds, summary; its count = requests
TTFT = "gen_ai.server.time_to_first_token"  # seconds, summary
TPOT = "gen_ai.server.time_per_output_token"  # seconds, summary
TOKEN_USAGE = "gen_ai.client.token.usage"  # {"input": n, "output": n} (gen_ai.token.type)
DECODE_RATE = "edgeslm.decode.throughput"  # tokens/s, summary (no OTel name exists)
ERRORS = "edgeslm.request.errors"  # {"total": n, "by_type": {error.type: n}}
CPU = "system.cpu.utilization"  # 0..1, whole device, over the interval
MEMORY_USAGE = "system.memory.usage"  # bytes in use, whole device
MEMORY_UTIL = "system.memory.utilization"  # 0..1
PROCESS_MEMORY = "process.memory.usage"  # resident bytes of the agent process
TEMPERATURE = "hw.temperature"  # degrees Celsius, hottest thermal zone; null if unknown
SUMMARY_METRICS = (REQUEST_DURATION, TTFT, TPOT, DECODE_RATE)
SUMMARY_KEYS = ("count", "sum", "p50", "p95", "max")


class MessageError(TelemetryError):
    """A message the collector refuses; ``reason`` names the dead-letter bucket."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason  # malformed_json | schema_version | invalid | oversized | topic


def summarize(values: list[float]) -> dict[str, float]:
    """count, sum, p50, p95 and max of ``values`` (nearest-rank percentiles; empty -> zeros)."""
    if not values:
        return {"count": 0, "sum": 0.0, "p50": 0.0, "p95": 0.0, "max": 0.0}
    s = sorted(values)
    n = len(s)

    def rank(q: float) -> float:
        return s[min(n - 1, max(0, math.ceil(q * n) - 1))]

    return {"count": n, "sum": round(sum(s), 6), "p50": round(rank(0.50), 6), "p95": round(rank(0.95), 6),
            "max": round(s[-1], 6)}


@dataclass
class Message:
    """A validated message: the topic's parts plus the decoded body."""

    kind: str  # "telemetry" | "status" | "event"
    fleet: str
    device: str
    ts: float
    body: dict[str, Any]  # the whole decoded JSON object
    seq: int | None = None  # telemetry: per-device sequence number
    raw: bytes = b""  # as received; stored so nothing is lost to re-encoding

    @property
    def metrics(self) -> dict[str, Any]:
        return self.body.get("metrics") or {}

    @property
    def resource(self) -> dict[str, Any]:
        return self.body.get("resource") or {}


def encode(body: dict[str, Any]) -> bytes:
    """Compact JSON bytes (the wire form)."""
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def telemetry_body(fleet: str, device: str, seq: int, ts: float, interval_s: float, metrics: dict[str, Any],
                   resource: dict[str, Any], agent: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "kind": "telemetry", "fleet": fleet, "device": device, "seq": seq,
            "ts": round(ts, 3), "interval_s": round(interval_s, 3), "resource": resource, "metrics": metrics,
            "agent": agent or {}}


def status_body(fleet: str, device: str, ts: float, online: bool, reason: str,
                resource: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "kind": "status", "fleet": fleet, "device": device,
            "ts": round(ts, 3), "online": online, "reason": reason, "resource": resource or {}}


def event_body(fleet: str, device: str, ts: float, name: str, severity: str, message: str, event_id: str,
               source: str, attributes: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "kind": "event", "fleet": fleet, "device": device, "ts": round(ts, 3),
            "id": event_id, "name": name, "severity": severity, "message": message, "source": source,
            "attributes": attributes or {}}


_TOPIC_KIND = {"telemetry": "telemetry", "status": "status", "events": "event"}


def parse(topic_name: str, payload: bytes, max_bytes: int = MAX_PAYLOAD_BYTES) -> Message:
    """Validate one received message; raise MessageError (with a dead-letter reason) if refused."""
    if len(payload) > max_bytes:
        raise MessageError("oversized", f"{len(payload)} bytes > limit {max_bytes}")
    try:
        parts = topics.parse(topic_name)
    except TelemetryError as exc:
        raise MessageError("topic", str(exc)) from None
    try:
        body = json.loads(payload, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageError("malformed_json", f"not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise MessageError("malformed_json", "payload is JSON but not an object")
    version = body.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise MessageError("schema_version", "no integer schema_version")
    if version != SCHEMA_VERSION:
        raise MessageError("schema_version", f"schema_version {version}; this collector reads {SCHEMA_VERSION}")
    kind = _TOPIC_KIND.get(parts.kind)
    if kind is None or body.get("kind") != kind:
        raise MessageError("invalid", f"kind {body.get('kind')!r} does not belong on a '{parts.kind}' topic")
    # The ACL guards topics; the payload must name the same device so it cannot be spoofed.
    if body.get("fleet") != parts.fleet or body.get("device") != parts.device:
        raise MessageError("invalid", "fleet/device in the payload differ from the topic")
    ts = body.get("ts")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not math.isfinite(ts):
        raise MessageError("invalid", "ts must be unix seconds")
    msg = Message(kind=kind, fleet=parts.fleet, device=parts.device, ts=float(ts), body=body, raw=payload)
    _CHECKS[kind](msg)
    return msg


def _check_telemetry(msg: Message) -> None:
    seq = msg.body.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise MessageError("invalid", "telemetry needs a non-negative integer seq")
    msg.seq = seq
    metrics = msg.body.get("metrics")
    if not isinstance(metrics, dict):
        raise MessageError("invalid", "telemetry needs a metrics object")
    for name in SUMMARY_METRICS:
        summary = metrics.get(name)
        if summary is None:
            continue
        # hot path (every message): exact type checks; NaN/Infinity were refused by the decoder
        if type(summary) is not dict or not all(type(summary.get(k)) in _NUM for k in SUMMARY_KEYS):
            raise MessageError("invalid", f"metric {name} must be {{{', '.join(SUMMARY_KEYS)}}} numbers")
    for name in (CPU, MEMORY_USAGE, MEMORY_UTIL, PROCESS_MEMORY, TEMPERATURE):
        if metrics.get(name) is not None and not _number(metrics[name]):
            raise MessageError("invalid", f"metric {name} must be a number or null")
    if not isinstance(msg.body.get("resource", {}), dict):
        raise MessageError("invalid", "resource must be an object")


def _check_status(msg: Message) -> None:
    if not isinstance(msg.body.get("online"), bool):
        raise MessageError("invalid", "status needs a boolean 'online'")


def _check_event(msg: Message) -> None:
    for key in ("id", "name"):
        if not isinstance(msg.body.get(key), str) or not msg.body[key]:
            raise MessageError("invalid", f"event needs a string '{key}'")


_CHECKS = {"telemetry": _check_telemetry, "status": _check_status, "event": _check_event}


_NUM = (int, float)  # exact types: bool is not a number here


def _number(v: Any) -> bool:
    return type(v) in _NUM and math.isfinite(v)


def _no_constants(name: str):
    raise ValueError(f"{name} is not a number JSON allows")
