"""The collector's HTTP side (``edgeslm fleet collect --http-port N``): /metrics and a dashboard.

::

    GET /metrics          Prometheus text format (promexport.FleetMetrics + the process's own metrics)
    GET /                 the dashboard: fleet table, per-device charts, alerts, rollout progress
    GET /dashboard.js     its script, /dashboard.css its style (served from here: no CDN, works offline)
    GET /api/fleet        JSON the page polls every 2 s: devices, collector counters, alerts, events, rollouts
    GET /api/device?fleet=F&device=D   the device's newest telemetry intervals (the charts)

Read-only; loopback by default (``--http-host`` to expose it, behind your own authentication).
"""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..errors import TelemetryError

ASSETS = Path(__file__).with_name("dashboard")
_FILES = {"/": ("index.html", "text/html; charset=utf-8"), "/dashboard.js": ("dashboard.js", "text/javascript"),
          "/dashboard.css": ("dashboard.css", "text/css")}


def _clean(v: Any) -> Any:
    """JSON-safe: NaN/inf (old stores) become null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def _state(text: str) -> str:
    """The views' yes / no (reason) / stale / ? as words for the page."""
    return {"yes": "online", "?": "unknown"}.get(text) or ("offline" + text[2:] if text.startswith("no") else text)


class FleetWeb:
    """Serves one collector's metrics and its store's view of the fleet."""

    def __init__(self, collector: Any, store: Any, stale_after_s: float = 60.0):
        from prometheus_client import CollectorRegistry, ProcessCollector

        self.collector, self.store, self.stale_after_s = collector, store, stale_after_s
        self.registry = CollectorRegistry()
        self.registry.register(collector.metrics)
        ProcessCollector(namespace="edgeslm_collector", registry=self.registry)
        self.server: ThreadingHTTPServer | None = None

    def start(self, host: str = "127.0.0.1", port: int = 0) -> "FleetWeb":
        web = self
        handler = type("FleetHandler", (_Handler,), {"web": web})
        try:
            self.server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise TelemetryError(f"cannot serve the dashboard on {host}:{port}: {exc.strerror or exc}") from None
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="edgeslm-web", daemon=True).start()
        return self

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    # -- JSON views -------------------------------------------------------------------------
    def fleet(self) -> dict[str, Any]:
        from .views import online_text

        now = time.time()
        fleet = self.collector.config.fleet
        devices = [dict(r.to_dict(), state=_state(online_text(r, self.stale_after_s)))
                   for r in self.store.devices(fleet)]
        events = self.store.events(fleet, None, 40)
        firing: dict[str, dict] = {}
        for e in sorted(events, key=lambda e: e["ts"]):  # oldest first: a resolve clears an earlier firing
            rule = f"{e['fleet']}/{e['device']}/{(e.get('attributes') or {}).get('rule', e['name'])}"
            if e["name"] == "alert.firing":
                firing[rule] = e
            elif e["name"] == "alert.resolved":
                firing.pop(rule, None)
        s = self.collector.stats
        rollouts = []
        for r in self.store.rollouts(fleet, limit=5):
            counts: dict[str, int] = {}
            for d in self.store.rollout_devices(r["id"]):
                counts[d["state"]] = counts.get(d["state"], 0) + 1
            rollouts.append({"id": r["id"], "fleet": r["fleet"], "state": r["state"], "stage": r["stage"],
                             "stages": len(r["spec"]["stages"]), "bundle": r["spec"]["bundle"].get("id"),
                             "detail": r["detail"], "devices": counts})
        return _clean({"now": now, "fleet": fleet, "devices": devices, "alerts": list(firing.values()),
                       "events": events[:20], "rollouts": rollouts,
                       "collector": {"received": s.received, "stored": s.stored, "duplicates": s.duplicates,
                                     "dead_letters": sum(s.dead.values()), "rate": round(self.collector.metrics.rate(), 1),
                                     "error": self.collector.error}})

    def device(self, fleet: str | None, device: str) -> dict[str, Any]:
        rows = self.store.history(fleet or self.collector.config.fleet, device, 120)
        return _clean({"device": device, "history": rows[::-1]})


class _Handler(BaseHTTPRequestHandler):
    web: FleetWeb
    server_version = "edgeslm-collector"

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        url = urlsplit(self.path)
        try:
            if url.path == "/metrics":
                from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

                self._send(200, CONTENT_TYPE_LATEST, generate_latest(self.web.registry))
            elif url.path in _FILES:
                name, kind = _FILES[url.path]
                self._send(200, kind, (ASSETS / name).read_bytes())
            elif url.path == "/api/fleet":
                self._json(self.web.fleet())
            elif url.path == "/api/device":
                q = parse_qs(url.query)
                if not q.get("device"):
                    self._send(400, "text/plain", b"device=... is required\n")
                    return
                self._json(self.web.device((q.get("fleet") or [None])[0], q["device"][0]))
            else:
                self._send(404, "text/plain", b"not found\n")
        except Exception as exc:  # a store hiccup: the page shows it and polls again
            self._send(503, "text/plain", f"{type(exc).__name__}: {exc}\n".encode())

    def _json(self, data: Any) -> None:
        self._send(200, "application/json", json.dumps(data, default=str).encode())

    def _send(self, code: int, kind: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)
