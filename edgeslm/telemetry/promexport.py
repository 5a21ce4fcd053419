"""Prometheus metrics of a collector: what its devices report, what it ingests, how rollouts go.

Names are the OpenTelemetry names of docs/telemetry.md made Prometheus-style (dots to
underscores, the unit as a suffix, ``_total`` on counters), under ``edgeslm_``; every device
series has ``fleet``, ``device`` and ``model`` (the bundle id) labels::

    edgeslm_gen_ai_server_time_to_first_token_seconds{quantile="0.5"|"0.95"}   newest interval
    edgeslm_gen_ai_server_time_per_output_token_seconds{quantile=...}           newest interval
    edgeslm_gen_ai_server_request_duration_seconds{quantile=...}                newest interval
    edgeslm_decode_throughput_tokens_per_second{quantile="0.5"}
    edgeslm_gen_ai_server_requests_total, edgeslm_request_errors_total          counted per interval
    edgeslm_gen_ai_client_token_usage_tokens_total{gen_ai_token_type="input"|"output"}
    edgeslm_system_memory_usage_bytes, edgeslm_process_memory_usage_bytes, edgeslm_system_memory_utilization_ratio,
    edgeslm_system_cpu_utilization_ratio, edgeslm_hw_temperature_celsius
    edgeslm_device_up{fleet,device} 1|0, edgeslm_devices{fleet,state="online"|"offline"}
    edgeslm_collector_messages_received_total, _stored_total, _duplicates_total, edgeslm_collector_dead_letters_total{reason}
    edgeslm_collector_ingest_rate_messages_per_second (over the last ~10 s)
    edgeslm_rollout_devices{fleet,rollout,bundle,state}, edgeslm_rollout_info{fleet,rollout,bundle,state} 1

Interval summaries arrive as nearest-rank quantiles of one interval, so they are exposed as
gauges with a ``quantile`` label (Prometheus cannot add quantiles up; use ``max``/``avg`` over
devices). Counters count each (device, seq) once per collector process: with several
collectors in a share group, ``sum`` them across collectors.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from . import schema

_Q = (("0.5", "p50"), ("0.95", "p95"))
_SUMMARIES = (("gen_ai_server_time_to_first_token_seconds", schema.TTFT, "Time to first token, newest interval"),
              ("gen_ai_server_time_per_output_token_seconds", schema.TPOT, "Time per output token, newest interval"),
              ("gen_ai_server_request_duration_seconds", schema.REQUEST_DURATION, "Request duration, newest interval"),
              ("decode_throughput_tokens_per_second", schema.DECODE_RATE, "Decode tokens/s per request, newest "
                                                                          "interval"))
_GAUGES = (("system_memory_usage_bytes", schema.MEMORY_USAGE, "Memory in use on the device"),
           ("process_memory_usage_bytes", schema.PROCESS_MEMORY, "Resident memory of the agent process"),
           ("system_memory_utilization_ratio", schema.MEMORY_UTIL, "Memory in use, 0..1"),
           ("system_cpu_utilization_ratio", schema.CPU, "CPU utilization over the interval, 0..1"),
           ("hw_temperature_celsius", schema.TEMPERATURE, "Hottest thermal zone"))


class FleetMetrics:
    """Updated by the collector's writer after each commit; read by a Prometheus scrape."""

    def __init__(self, collector: Any = None, store: Any = None):
        self.collector, self.store = collector, store
        self._lock = threading.Lock()
        self._latest: dict[tuple[str, str], dict] = {}  # newest telemetry body per device
        self._seq: dict[tuple[str, str], int] = {}
        self._counts: dict[tuple[str, str], list[int]] = {}  # requests, errors, input, output
        self._up: dict[tuple[str, str], bool] = {}
        self._rate: deque[tuple[float, int]] = deque(maxlen=64)

    # -- writer side -------------------------------------------------------------------------
    def observe(self, messages: list[schema.Message]) -> None:
        newest: dict[tuple[str, str], schema.Message] = {}
        seqs, counts = self._seq, self._counts
        with self._lock:
            for m in messages:
                kind = m.kind
                if kind == "telemetry":
                    key = (m.fleet, m.device)
                    seq = m.seq
                    if seq <= seqs.get(key, -1):
                        continue  # counted once per (device, seq): redeliveries and resends are not
                    seqs[key] = seq
                    cols = m.columns
                    c = counts.get(key)
                    if c is None:
                        c = counts[key] = [0, 0, 0, 0]
                    # requests, errors, input and output tokens (validate.METRIC_COLUMNS 2, 3, 10, 11)
                    c[0] += cols[2] or 0
                    c[1] += cols[3] or 0
                    c[2] += cols[10] or 0
                    c[3] += cols[11] or 0
                    newest[key] = m
                elif kind == "status":
                    self._up[(m.fleet, m.device)] = bool(m.body.get("online"))
            for key, m in newest.items():  # one body per device per batch
                self._latest[key] = {"model": m.columns[0] or "", "metrics": m.metrics}

    def tick(self, received: int) -> None:
        self._rate.append((time.monotonic(), received))

    # -- scrape side ------------------------------------------------------------------------
    def rate(self) -> float:
        now = time.monotonic()
        pts = [p for p in self._rate if now - p[0] <= 10.0]
        if len(pts) < 2 or pts[-1][0] == pts[0][0]:
            return 0.0
        return (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])

    def collect(self):
        """prometheus_client custom-collector protocol: yield metric families."""
        from prometheus_client.core import GaugeMetricFamily

        with self._lock:
            latest, counts, up = dict(self._latest), {k: list(v) for k, v in self._counts.items()}, dict(self._up)
        labels = ["fleet", "device", "model"]
        for name, metric, doc in _SUMMARIES:
            g = GaugeMetricFamily(f"edgeslm_{name}", doc, labels=labels + ["quantile"])
            for (f, d), v in latest.items():
                s = v["metrics"].get(metric) or {}
                for q, k in _Q[:1] if name.startswith("decode") else _Q:
                    if s.get("count"):
                        g.add_metric([f, d, v["model"], q], float(s[k]))
            yield g
        for name, metric, doc in _GAUGES:
            g = GaugeMetricFamily(f"edgeslm_{name}", doc, labels=labels)
            for (f, d), v in latest.items():
                x = v["metrics"].get(metric)
                if x is not None:
                    g.add_metric([f, d, v["model"]], float(x))
            yield g
        yield from self._counters(latest, counts, labels)
        yield from self._liveness(up, latest)
        yield from self._collector()
        yield from self._rollouts()

    def _counters(self, latest, counts, labels):
        from prometheus_client.core import CounterMetricFamily

        req = CounterMetricFamily("edgeslm_gen_ai_server_requests", "Requests served", labels=labels)
        err = CounterMetricFamily("edgeslm_request_errors", "Failed requests", labels=labels)
        tok = CounterMetricFamily("edgeslm_gen_ai_client_token_usage_tokens", "Tokens in and out",
                                  labels=labels + ["gen_ai_token_type"])
        for key, (r, e, i, o) in counts.items():
            lab = [key[0], key[1], (latest.get(key) or {}).get("model", "")]
            req.add_metric(lab, r)
            err.add_metric(lab, e)
            tok.add_metric(lab + ["input"], i)
            tok.add_metric(lab + ["output"], o)
        yield from (req, err, tok)

    def _liveness(self, up, latest):
        from prometheus_client.core import GaugeMetricFamily

        g = GaugeMetricFamily("edgeslm_device_up", "1 while the device is online (status topic)",
                              labels=["fleet", "device"])
        fleets: dict[str, list[int]] = {}
        for (f, d), on in up.items():
            g.add_metric([f, d], 1.0 if on else 0.0)
            fleets.setdefault(f, [0, 0])[0 if on else 1] += 1
        yield g
        n = GaugeMetricFamily("edgeslm_devices", "Devices by state", labels=["fleet", "state"])
        for f, (on, off) in fleets.items():
            n.add_metric([f, "online"], on)
            n.add_metric([f, "offline"], off)
        yield n

    def _collector(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = getattr(self.collector, "stats", None)
        if s is None:
            return
        for name, value, doc in (("received", s.received, "Messages taken off the wire"),
                                 ("stored", s.stored, "New telemetry rows"),
                                 ("duplicates", s.duplicates, "Telemetry the store already had")):
            yield CounterMetricFamily(f"edgeslm_collector_messages_{name}", doc, value=value)
        dead = CounterMetricFamily("edgeslm_collector_dead_letters", "Refused messages", labels=["reason"])
        for reason, n in s.dead.items():
            dead.add_metric([reason], n)
        yield dead
        yield GaugeMetricFamily("edgeslm_collector_ingest_rate_messages_per_second", "Messages/s, last ~10 s",
                                value=self.rate())

    def _rollouts(self):
        from prometheus_client.core import GaugeMetricFamily

        if self.store is None or not hasattr(self.store, "rollouts"):
            return
        info = GaugeMetricFamily("edgeslm_rollout_info", "1 per rollout, with its state",
                                 labels=["fleet", "rollout", "bundle", "state"])
        devs = GaugeMetricFamily("edgeslm_rollout_devices", "Devices of a rollout by state",
                                 labels=["fleet", "rollout", "bundle", "state"])
        for r in self.store.rollouts(limit=10):
            bundle = r["spec"]["bundle"].get("id", "")
            info.add_metric([r["fleet"], r["id"], bundle, r["state"]], 1.0)
            counts: dict[str, int] = {}
            for d in self.store.rollout_devices(r["id"]):
                counts[d["state"]] = counts.get(d["state"], 0) + 1
            for state, n in counts.items():
                devs.add_metric([r["fleet"], r["id"], bundle, state], n)
        yield info
        yield devs
