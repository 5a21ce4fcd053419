"""Alert rules the collector evaluates on what it receives: offline, latency SLO, errors, heat.

Each rule is a state machine per device: it emits ``alert.firing`` once when its condition
becomes true and ``alert.resolved`` once when it stops being true, never a stream of
repeats. Times are the collector's receive times, so a device with a wrong clock cannot
hide (or fake) an outage; the collector's own alert events (which come back to it on the
device's events topic) do not count as hearing from the device, or the offline alert would
resolve on its own alert and fire again, forever.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import schema
from .schema import Message


@dataclass
class AlertRules:
    offline_after_s: float | None = 60.0  # status offline, or no message at all, for this long
    ttft_p95_slo_s: float | None = None  # p95 time to first token above this in an interval
    error_rate: float | None = None  # errors / (requests + errors) above this in an interval
    min_requests: int = 5  # ignore error rates of intervals with fewer requests (1 of 2 is not 50 %)
    temperature_c: float | None = None  # hottest zone above this many degrees Celsius

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.offline_after_s, self.ttft_p95_slo_s, self.error_rate,
                                           self.temperature_c))


@dataclass
class Alert:
    fleet: str
    device: str
    rule: str  # offline | latency | error_rate | temperature
    firing: bool  # True: started; False: resolved
    value: float | None  # what was measured
    threshold: float | None
    since: float  # receive time the condition started
    message: str

    @property
    def name(self) -> str:
        return "alert.firing" if self.firing else "alert.resolved"

    @property
    def severity(self) -> str:
        if not self.firing:
            return "info"
        return "critical" if self.rule in ("offline", "temperature") else "warning"

    @property
    def id(self) -> str:
        return f"{self.rule}:{self.fleet}:{self.device}:{int(self.since * 1000)}:{'firing' if self.firing else 'resolved'}"

    def attributes(self) -> dict[str, Any]:
        return {"rule": self.rule, "value": self.value, "threshold": self.threshold, "since": round(self.since, 3)}


@dataclass
class _Device:
    last_heard: float  # receive time of the newest message of any kind
    online: bool | None = None
    offline_since: float | None = None
    firing: dict[str, float] = field(default_factory=dict)  # rule -> since
    values: dict[str, float | None] = field(default_factory=dict)  # rule -> latest measurement


class AlertEngine:
    """Feed it messages with :meth:`observe`; :meth:`evaluate` returns the state changes."""

    def __init__(self, rules: AlertRules):
        self.rules = rules
        self._devices: dict[tuple[str, str], _Device] = {}

    def observe(self, msg: Message, received_at: float) -> None:
        if msg.kind == "event" and msg.body.get("source") == "collector":
            return  # a collector's own alert about the device (it comes back on the events topic): not the device
        d = self._devices.setdefault((msg.fleet, msg.device), _Device(last_heard=received_at))
        d.last_heard = max(d.last_heard, received_at)
        if msg.kind == "status":
            d.online = bool(msg.body.get("online"))
            d.offline_since = None if d.online else received_at
        elif msg.kind == "telemetry":
            if d.online is False:
                d.online, d.offline_since = True, None  # it talks, so it is up (status may lag)
            m = msg.metrics
            ttft = m.get(schema.TTFT) or {}
            d.values["latency"] = ttft.get("p95") if ttft.get("count") else None
            requests = (m.get(schema.REQUEST_DURATION) or {}).get("count") or 0
            errors = (m.get(schema.ERRORS) or {}).get("total") or 0
            total = requests + errors
            d.values["error_rate"] = errors / total if total and total >= self.rules.min_requests else None
            d.values["temperature"] = m.get(schema.TEMPERATURE)

    def evaluate(self, now: float) -> list[Alert]:
        r = self.rules
        out: list[Alert] = []
        for (fleet, device), d in self._devices.items():
            checks: dict[str, tuple[bool, float | None, float | None, float]] = {}
            if r.offline_after_s is not None:
                if d.online is False and d.offline_since is not None:
                    silent = now - d.offline_since
                    start = d.offline_since
                else:
                    silent = now - d.last_heard
                    start = d.last_heard
                checks["offline"] = (silent >= r.offline_after_s, round(silent, 3), r.offline_after_s, start)
            for rule, limit in (("latency", r.ttft_p95_slo_s), ("error_rate", r.error_rate),
                                ("temperature", r.temperature_c)):
                if limit is not None:
                    value = d.values.get(rule)
                    checks[rule] = (value is not None and value > limit, value, limit, now)
            for rule, (bad, value, limit, start) in checks.items():
                since = d.firing.get(rule)
                if bad and since is None:
                    d.firing[rule] = start
                    out.append(Alert(fleet, device, rule, True, value, limit, start,
                                     _describe(rule, device, value, limit)))
                elif not bad and since is not None:
                    del d.firing[rule]
                    out.append(Alert(fleet, device, rule, False, value, limit, since,
                                     f"{device}: {rule} back to normal"))
        return out


def _describe(rule: str, device: str, value: float | None, limit: float | None) -> str:
    if rule == "offline":
        return f"{device}: offline for {value:.0f} s (limit {limit:g} s)"
    if rule == "latency":
        return f"{device}: p95 time to first token {value * 1000:.0f} ms over the SLO of {limit * 1000:.0f} ms"
    if rule == "error_rate":
        return f"{device}: error rate {value:.0%} over {limit:.0%}"
    return f"{device}: temperature {value:.1f} C over {limit:g} C"
