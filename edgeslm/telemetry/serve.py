"""The agent's local request endpoint: a tiny HTTP server on the device (loopback by default).

::

    POST /generate  {"prompt": "...", "max_new_tokens": 64, "temperature": 0.0}
    POST /chat      {"messages": [{"role": "user", "content": "..."}], "max_new_tokens": 64}
    GET  /health    {"ok": true, "connected": true, "buffered": 0, ...}

Replies are JSON: ``{"text", "finish_reason", "metrics"}``; bad input is answered with
``{"error": "..."}`` and 400 (not JSON, nested deeper than :data:`MAX_DEPTH`, wrong types),
411 (no ``Content-Length``: chunked bodies are not read), 413 (body over :data:`MAX_BODY`) or
404. The server reads exactly ``Content-Length`` bytes, never more and never "until the end",
and a client that stalls is dropped after :data:`TIMEOUT_S`. Every request goes through
:meth:`Agent.generate`, so it is measured and counted (errors included) in the next
telemetry interval.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..errors import EdgeSLMError, TelemetryError

_GEN_KEYS = {"max_new_tokens", "temperature", "top_k", "top_p", "seed", "stop", "stop_on_eos"}
MAX_BODY = 1 << 20  # bytes of a request body
MAX_DEPTH = 8  # JSON nesting of a request body ({"messages": [{"role": ...}]} is 3)
TIMEOUT_S = 30.0  # a client that sends nothing for this long is disconnected


class HTTPError(TelemetryError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def read_body(headers, rfile) -> dict[str, Any]:
    """The request's JSON object, read within the limits; HTTPError(400/411/413) otherwise."""
    if headers.get("Transfer-Encoding"):
        raise HTTPError(411, "send the body with a Content-Length (chunked bodies are not accepted)")
    raw = headers.get("Content-Length")
    if raw is None:
        raise HTTPError(411, "a POST needs a Content-Length header")
    if not raw.strip().isdigit():  # refuses "-1", "+5", "1e3", " ", "0x10"
        raise HTTPError(400, f"Content-Length must be a number of bytes, not {raw[:20]!r}")
    length = int(raw)
    if length > MAX_BODY:
        raise HTTPError(413, f"request body of {length} bytes is over the limit of {MAX_BODY} bytes")
    data = rfile.read(length) if length else b""
    if len(data) < length:
        raise HTTPError(400, f"the body ended after {len(data)} of {length} bytes")
    try:
        req = json.loads(data or b"{}")
    except RecursionError:
        raise HTTPError(400, f"request body is nested too deeply (limit {MAX_DEPTH})") from None
    except ValueError as exc:
        raise HTTPError(400, f"request body is not JSON: {exc}") from None
    if not isinstance(req, dict):
        raise HTTPError(400, "request body must be a JSON object")
    if _depth(req) > MAX_DEPTH:
        raise HTTPError(400, f"request body is nested too deeply (limit {MAX_DEPTH})")
    return req


def _depth(v: Any, level: int = 1) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(v, dict):
        return max((_depth(x, level + 1) for x in v.values()), default=level)
    if isinstance(v, list):
        return max((_depth(x, level + 1) for x in v), default=level)
    return level - 1


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value):
        raise HTTPError(400, "give 'messages': a non-empty list of {\"role\": str, \"content\": str}")
    return value


def serve(agent: Any, host: str = "127.0.0.1", port: int = 8080) -> ThreadingHTTPServer:
    """Start serving in a daemon thread; call ``.shutdown()`` on the returned server to stop."""
    handler = type("Handler", (_AgentHandler,), {"agent": agent})
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise TelemetryError(f"cannot listen on {host}:{port}: {exc}") from exc
    threading.Thread(target=server.serve_forever, name="edgeslm-agent-http", daemon=True).start()
    return server


class _AgentHandler(BaseHTTPRequestHandler):
    """The endpoint's requests; :func:`serve` makes a subclass that names the ``agent``."""

    agent: Any = None
    timeout = TIMEOUT_S  # socket timeout: a stalled client cannot hold a thread for ever

    def log_message(self, *args):  # quiet: telemetry is the log
        pass

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client is gone
            self.close_connection = True

    def do_GET(self):
        if self.path.rstrip("/") in ("/health", ""):
            self._reply(200, {"ok": True, **self.agent.stats()})
        else:
            self._reply(404, {"error": f"no such endpoint {self.path}; try POST /generate"})

    def do_POST(self):
        route = self.path.rstrip("/")
        if route not in ("/generate", "/chat"):
            self._reply(404, {"error": f"no such endpoint {self.path}; try POST /generate or /chat"})
            return
        try:
            result = _generate(self.agent, route, read_body(self.headers, self.rfile))
        except HTTPError as exc:
            self.close_connection = True  # a body may be left unread: never parse it as the next request
            self._reply(exc.status, {"error": str(exc)})
            return
        except TimeoutError:
            self.close_connection = True
            self._reply(408, {"error": f"no request body within {TIMEOUT_S:g} s"})
            return
        except (ValueError, EdgeSLMError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            self._reply(400, {"error": f"{type(exc).__name__}: {exc}"[:500]})
            return
        self._reply(200, {"text": result.text, "finish_reason": result.finish_reason,
                          "metrics": result.metrics.to_dict()})


def _generate(agent: Any, route: str, req: dict[str, Any]):
    """The agent's answer to a /chat (messages) or /generate (prompt) request body."""
    kw = {k: v for k, v in req.items() if k in _GEN_KEYS}
    if route == "/chat":
        return agent.generate(_messages(req.get("messages")), chat=True, **kw)
    if not isinstance(req.get("prompt"), str):
        raise HTTPError(400, "give a string 'prompt'")
    return agent.generate(req["prompt"], **kw)
