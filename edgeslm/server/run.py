"""Run the app under uvicorn until SIGTERM / Ctrl-C, then stop cleanly."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any

from .._deps import require
from .app import ServeConfig, create_app


def run_server(model: Any, config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, telemetry: Any = None,
               lock: Any = None, log_level: str = "warning", graceful_s: float = 5.0) -> None:
    """Serve until SIGTERM or SIGINT. uvicorn stops accepting connections, in-flight requests
    get ``graceful_s`` seconds (streams are cancelled between two tokens), then the model
    worker thread is joined. Returns normally; the caller closes the model."""
    require("starlette", "serve", "edgeslm serve")
    uvicorn = require("uvicorn", "serve", "edgeslm serve")
    app = create_app(model, config, telemetry=telemetry, lock=lock)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                                           timeout_graceful_shutdown=graceful_s, lifespan="on"))
    try:
        with _signals_end_the_server():
            server.run()
    except SystemExit:  # uvicorn exits when it cannot bind (port taken ...): it logged why
        pass
    finally:
        app.state.worker.close()
    if not server.started:
        from ..errors import EdgeSLMError

        raise EdgeSLMError(f"could not serve on {host}:{port} (see the message above)")


@contextlib.contextmanager
def _signals_end_the_server():
    """uvicorn handles SIGTERM/SIGINT itself, then re-raises them once stopped; with the default
    handlers that kills the process (or raises KeyboardInterrupt) before the model is closed.
    Here the re-raised signal is absorbed, so a stop is a normal return."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
