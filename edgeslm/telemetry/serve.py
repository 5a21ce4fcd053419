"""The agent's local request endpoint: a tiny HTTP server on the device (loopback by default).

::

    POST /generate  {"prompt": "...", "max_new_tokens": 64, "temperature": 0.0}
    POST /chat      {"messages": [{"role": "user", "content": "..."}], "max_new_tokens": 64}
    GET  /health    {"ok": true, "connected": true, "buffered": 0, ...}

Replies are JSON: ``{"text", "finish_reason", "metrics"}``; bad input is a 400 with
``{"error": "..."}``. Every request goes through :meth:`Agent.generate`, so it is measured
and counted (errors included) in the next telemetry interval.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..errors import EdgeSLMError, TelemetryError

_GEN_KEYS = {"max_new_tokens", "temperature", "top_k", "top_p", "seed", "stop", "stop_on_eos"}
MAX_BODY = 1 << 20


def serve(agent: Any, host: str = "127.0.0.1", port: int = 8080) -> ThreadingHTTPServer:
    """Start serving in a daemon thread; call ``.shutdown()`` on the returned server to stop."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet: telemetry is the log
            pass

        def _reply(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path.rstrip("/") in ("/health", ""):
                self._reply(200, {"ok": True, **agent.stats()})
            else:
                self._reply(404, {"error": f"no such endpoint {self.path}; try POST /generate"})

        def do_POST(self):
            route = self.path.rstrip("/")
            if route not in ("/generate", "/chat"):
                self._reply(404, {"error": f"no such endpoint {self.path}; try POST /generate or /chat"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    raise TelemetryError(f"request body over {MAX_BODY} bytes")
                req = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(req, dict):
                    raise TelemetryError("request body must be a JSON object")
                kw = {k: v for k, v in req.items() if k in _GEN_KEYS}
                if route == "/chat":
                    result = agent.generate(req.get("messages") or [], chat=True, **kw)
                else:
                    if not isinstance(req.get("prompt"), str):
                        raise TelemetryError("give a string 'prompt'")
                    result = agent.generate(req["prompt"], **kw)
            except (ValueError, EdgeSLMError, TypeError) as exc:
                self._reply(400, {"error": str(exc)})
                return
            self._reply(200, {"text": result.text, "finish_reason": result.finish_reason,
                              "metrics": result.metrics.to_dict()})

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        raise TelemetryError(f"cannot listen on {host}:{port}: {exc}") from exc
    threading.Thread(target=server.serve_forever, name="edgeslm-agent-http", daemon=True).start()
    return server
