"""An OpenAI-compatible HTTP server for one bundle (``edgeslm serve``): Starlette + uvicorn.

::

    GET  /health                 {"ok": true, "model", "busy", "capacity", "served", "rejected", ...}
    GET  /v1/models              the one model served
    POST /v1/chat/completions    messages -> the model's chat template; "stream": true for SSE
    POST /v1/completions         plain completion of "prompt"; "stream": true for SSE

Requests run one at a time on the model, first come first served, behind a bounded queue
(429 + Retry-After when full). Errors are OpenAI error objects. See docs/serve.md.
Starlette and uvicorn are imported only when an app is made (the ``serve`` extra:
``pip install 'edgeslm[serve]'``).
"""

from __future__ import annotations

from .app import ServeConfig, create_app
from .protocol import ApiError, Limits
from .run import run_server

__all__ = ["ApiError", "Limits", "ServeConfig", "create_app", "run_server"]
