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
from . import validate as V

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
        self.ack: tuple[str, str, int] | None = None  # (fleet, device, seq) of the topic's device, when known
        self.reason = reason  # malformed_json | schema_version | invalid | oversized | topic | store


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
    seq: int | None = None  # telemetry (and agent events): per-device sequence number
    raw: bytes = b""  # as received
    text: str = ""  # ``raw`` decoded (strict UTF-8); stored so nothing is lost to re-encoding
    received_at: float = 0.0  # collector receive time: orders status by broker arrival, not device clocks
    columns: tuple = ()  # telemetry: the flattened store columns (validate.METRIC_COLUMNS)

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


def ack_body(fleet: str, device: str, ts: float, ranges: list[list[int]]) -> dict[str, Any]:
    """What a collector tells a device after a commit: these sequence numbers are handled, forget them."""
    return {"schema_version": SCHEMA_VERSION, "kind": "ack", "fleet": fleet, "device": device, "ts": round(ts, 3),
            "seqs": ranges}


def event_seq(body: dict[str, Any], seq: int | None) -> dict[str, Any]:
    """``body`` with a top-level ``seq`` (agent events travel through the device queue like telemetry)."""
    if seq is not None:
        body["seq"] = seq
    return body


_TOPIC_KIND = {"telemetry": "telemetry", "status": "status", "events": "event"}
_TOPICS: dict[str, topics.TopicParts] = {}  # parsed topic names (they repeat once per device)


def parse(topic_name: str, payload: bytes, max_bytes: int = MAX_PAYLOAD_BYTES, received_at: float = 0.0) -> Message:
    """Validate one received message; raise MessageError (with a dead-letter reason) if refused.

    Every field is checked for type and range (:mod:`.validate`) so that what passes fits
    every store and view; ``received_at`` is the collector's receive time (broker arrival order).
    """
    if len(payload) > max_bytes:
        raise MessageError("oversized", f"{len(payload)} bytes > limit {max_bytes}")
    parts = _TOPICS.get(topic_name)
    if parts is None:
        try:
            parts = topics.parse(topic_name)
        except TelemetryError as exc:
            raise MessageError("topic", str(exc)) from None
        if len(_TOPICS) >= 100_000:  # bounded: one entry per device topic seen
            _TOPICS.clear()
        _TOPICS[topic_name] = parts
    if parts.kind == "telemetry" and type(payload) is bytes and _fast is not None:
        msg = _fast.telemetry(parts, payload, received_at)  # the common message, typed checks in C
        if msg is not None:
            return msg  # (None: not the common shape, decided below)
    try:
        text = payload.decode("utf-8") if isinstance(payload, (bytes, bytearray)) else payload
        body = _decode(payload, text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageError("malformed_json", f"not UTF-8 JSON ({exc})") from None
    except RecursionError:
        raise MessageError("malformed_json", "JSON nested too deeply to decode") from None
    if type(body) is not dict:
        raise MessageError("malformed_json", "payload is JSON but not an object")
    try:
        return _validate(parts, body, payload, text, received_at)
    except MessageError as exc:
        seq = body.get("seq")  # the sender may forget a refused message: ack it for the TOPIC's device
        if parts.kind != "status" and type(seq) is int and 0 <= seq <= V.INT64_MAX:
            exc.ack = (parts.fleet, parts.device, seq)
        raise


def _validate(parts: topics.TopicParts, body: dict, payload: bytes, text: str, received_at: float) -> Message:
    version = body.get("schema_version")
    if type(version) is not int:  # bool is not int here: true is refused
        raise MessageError("schema_version", "no integer schema_version")
    if version != SCHEMA_VERSION:
        raise MessageError("schema_version", f"schema_version {version}; this collector reads {SCHEMA_VERSION}")
    kind = _TOPIC_KIND.get(parts.kind)
    if kind is None or body.get("kind") != kind:
        raise MessageError("invalid", f"kind {str(body.get('kind'))[:40]!r} does not belong on a '{parts.kind}' topic")
    # The ACL guards topics; the payload must name the same device so it cannot be spoofed.
    if body.get("fleet") != parts.fleet or body.get("device") != parts.device:
        raise MessageError("invalid", "fleet/device in the payload differ from the topic")
    try:
        ts = V.timestamp(body.get("ts"))
        msg = Message(kind=kind, fleet=parts.fleet, device=parts.device, ts=ts, body=body, raw=payload, text=text,
                      received_at=received_at)
        _CHECKS[kind](msg, V.Checker("\\u" in text))
    except V.Invalid as exc:
        raise MessageError("invalid", str(exc)) from None
    return msg


_COMMON = frozenset(("schema_version", "kind", "fleet", "device", "ts"))
_TELEMETRY_KEYS = _COMMON | {"seq", "interval_s", "resource", "metrics", "agent"}
_STATUS_KEYS = _COMMON | {"online", "reason", "resource"}
_EVENT_KEYS = _COMMON | {"id", "name", "severity", "message", "source", "attributes", "seq"}
_METRIC_NAMES = frozenset(SUMMARY_METRICS + (TOKEN_USAGE, ERRORS, CPU, MEMORY_USAGE, MEMORY_UTIL, PROCESS_MEMORY,
                                             TEMPERATURE))


def _check_telemetry(msg: Message, c: V.Checker) -> None:
    b = msg.body
    msg.seq = c.count(b.get("seq"), "seq")
    c.opt_number(b.get("interval_s"), "interval_s", 0.0, 1e7)
    r = c.resource(b.get("resource"))
    m = c.obj(b.get("metrics"), "metrics", required=True)
    dur, ttft = c.summary(m.get(REQUEST_DURATION), REQUEST_DURATION), c.summary(m.get(TTFT), TTFT)
    tpot, rate = c.summary(m.get(TPOT), TPOT), c.summary(m.get(DECODE_RATE), DECODE_RATE)
    inp, out = c.tokens(m.get(TOKEN_USAGE), TOKEN_USAGE)
    errs = c.errors(m.get(ERRORS), ERRORS)
    cpu = c.opt_number(m.get(CPU), CPU, 0.0, 1.0)
    c.opt_number(m.get(MEMORY_USAGE), MEMORY_USAGE, 0.0)
    mem = c.opt_number(m.get(MEMORY_UTIL), MEMORY_UTIL, 0.0, 1.0)
    c.opt_number(m.get(PROCESS_MEMORY), PROCESS_MEMORY, 0.0)
    temp = c.opt_number(m.get(TEMPERATURE), TEMPERATURE, -273.15, 1000.0)
    c.rest(m, _METRIC_NAMES, "metrics", 1)
    dropped = c.agent(b.get("agent"))
    c.rest(b, _TELEMETRY_KEYS, "message", 0)
    # the flattened store columns (validate.METRIC_COLUMNS), taken once here
    msg.columns = (r.get("edgeslm.bundle.id"), r.get("edgeslm.bundle.sha256"), dur and dur["count"], errs,
                   ttft and ttft["p50"], ttft and ttft["p95"], ttft and ttft["max"], dur and dur["p95"],
                   tpot and tpot["p95"], rate and rate["p50"], inp, out, cpu, mem, temp, dropped)


def _check_status(msg: Message, c: V.Checker) -> None:
    b = msg.body
    if type(b.get("online")) is not bool:
        raise V.Invalid("status needs a boolean 'online'")
    c.opt_text(b.get("reason"), "reason", V.MAX_SHORT)
    c.resource(b.get("resource"))
    c.rest(b, _STATUS_KEYS, "message", 0)


def _check_event(msg: Message, c: V.Checker) -> None:
    b = msg.body
    for key in ("id", "name"):
        c.text(b.get(key), f"event {key}", V.MAX_ID, empty=False)
    c.opt_text(b.get("severity"), "severity", V.MAX_SHORT)
    c.opt_text(b.get("source"), "source", V.MAX_SHORT)
    c.opt_text(b.get("message"), "message", V.MAX_TEXT)
    c.free(c.obj(b.get("attributes"), "attributes"), "attributes", 1)
    msg.seq = c.opt_count(b.get("seq"), "seq")
    c.rest(b, _EVENT_KEYS, "message", 0)


_CHECKS = {"telemetry": _check_telemetry, "status": _check_status, "event": _check_event}


def _no_constants(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


_DECODER = json.JSONDecoder(parse_constant=_no_constants)  # one decoder for every message (no per-call setup)


def _decode(payload, text: str) -> Any:
    """msgspec where it decodes (4x faster: same values as ``json``); else ``json``, whose error
    (or value: NaN, 1e999 and lone-surrogate escapes decode there and are refused by the checks)
    decides, so the dead-letter reasons stay what they were."""
    if _fast is not None:
        try:
            return _fast.DECODER.decode(payload)
        except Exception:
            pass
    return _DECODER.decode(text)


#: The msgspec fast path (``fastpath``, the `fleet` extra: collection ~3x cheaper) once it is
#: imported: it registers itself through :func:`use_fast_path` (the telemetry package imports it
#: when msgspec is installed). None: every message takes the full checks, which still work.
#: Registration rather than an import here, so schema -> fastpath -> schema is not a cycle.
_fast: Any = None


def use_fast_path(module: Any) -> None:
    """Route the common telemetry message through ``module.telemetry`` / ``module.DECODER``."""
    global _fast
    _fast = module
