"""The ASGI app (Starlette): routes, API key, body limit, SSE streaming, OpenAI error objects."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import EdgeSLMError, GenerationError
from .protocol import (FINISH, ApiError, Limits, Request, chunk_body, completion_body, new_id, parse_chat,
                       parse_completion)
from .worker import Job, ModelWorker


@dataclass
class ServeConfig:
    model_id: str  # the id /v1/models lists and requests must name
    api_key: str | None = None  # when set, /v1/* needs "Authorization: Bearer <key>"
    max_queue: int = 8  # requests waiting behind the running one; more get 429
    retry_after_s: int = 1  # the Retry-After a 429 carries
    limits: Limits = field(default_factory=Limits)


def create_app(model: Any, config: ServeConfig, telemetry: Any = None, lock: Any = None):
    """An ASGI app serving ``model`` (a LoadedModel). ``telemetry``: anything with
    ``record_error(error)`` -- an :class:`~edgeslm.telemetry.agent.Agent` whose ``attach(model)``
    already records every finished generation -- counts failed and refused requests too.
    ``lock``: held while generating, when something else uses the model too (the agent)."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.routing import Route

    h = _Handlers(model, config, telemetry, lock)
    routes = [
        Route("/health", h.health, methods=["GET"]),
        Route("/v1/models", h.models, methods=["GET"]),
        Route("/v1/models/{model:path}", h.model_detail, methods=["GET"]),
        Route("/v1/chat/completions", h.chat, methods=["POST"]),
        Route("/v1/completions", h.completions, methods=["POST"]),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(_ApiKey, key=config.api_key)],
                    exception_handlers={ApiError: _on_api_error, HTTPException: _on_http_error, Exception: _on_crash},
                    lifespan=_lifespan(h.worker))
    app.state.worker = h.worker
    return app


class _Handlers:
    """The endpoints, sharing one model worker."""

    def __init__(self, model: Any, config: ServeConfig, telemetry: Any, lock: Any):
        on_error = (lambda exc: telemetry.record_error(type(exc).__name__)) if telemetry is not None else None
        self.model, self.config, self.telemetry = model, config, telemetry
        self.worker = ModelWorker(model, config.max_queue, lock=lock, on_error=on_error)
        self.started = time.time()

    async def health(self, request):
        from starlette.responses import JSONResponse

        w = self.worker
        return JSONResponse({"ok": True, "model": self.config.model_id, "busy": w.busy, "capacity": w.capacity,
                             "served": w.served, "rejected": w.rejected,
                             "uptime_s": round(time.time() - self.started, 1)})

    async def models(self, request):
        from starlette.responses import JSONResponse

        return JSONResponse({"object": "list", "data": [_model_card(self.config.model_id, self.started)]})

    async def model_detail(self, request):
        from starlette.responses import JSONResponse

        if request.path_params["model"] != self.config.model_id:
            raise _unknown_model(request.path_params["model"], self.config.model_id)
        return JSONResponse(_model_card(self.config.model_id, self.started))

    async def chat(self, request):
        return await self._generate(request, parse_chat)

    async def completions(self, request):
        return await self._generate(request, parse_completion)

    async def _generate(self, request, parse):
        from starlette.responses import JSONResponse, StreamingResponse

        cfg = self.config
        req = parse(await _read_json(request, cfg.limits.max_body_bytes))
        if req.model != cfg.model_id:
            raise _unknown_model(req.model, cfg.model_id)
        ids = await asyncio.to_thread(_render, self.model, req)
        job = Job(ids=ids, config=req.config(_check_lengths(self.model, req, ids, cfg.limits)))
        self._admit()
        events: asyncio.Queue = asyncio.Queue()
        self.worker.submit(job, asyncio.get_running_loop(), events)
        rid = new_id(req.kind)
        if req.stream:
            return StreamingResponse(_sse(req, rid, cfg.model_id, job, events), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            while True:
                kind, value = await events.get()
                if kind == "done":
                    return JSONResponse(completion_body(req, rid, cfg.model_id, value))
                if kind == "error":
                    raise _as_api_error(value)
        finally:
            job.cancelled.set()  # harmless when done; stops the job when this handler was cancelled

    def _admit(self) -> None:
        if self.worker.admit():
            return
        if self.telemetry is not None:
            self.telemetry.record_error("QueueFull")
        retry = self.config.retry_after_s
        raise ApiError(429, f"the server is busy ({self.worker.capacity} requests running or queued); retry "
                       f"after {retry} s", code="rate_limit_exceeded", type="requests",
                       headers={"Retry-After": str(retry)})


def _error_response(err: ApiError):
    from starlette.responses import JSONResponse

    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


async def _on_api_error(request, exc: ApiError):
    return _error_response(exc)


async def _on_http_error(request, exc):
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    message = f"{request.method} {request.url.path}: {exc.detail}; see GET /v1/models, POST " \
              f"/v1/chat/completions, POST /v1/completions"
    return _error_response(ApiError(exc.status_code, message, code=code))


async def _on_crash(request, exc: Exception):
    return _error_response(ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error"))


def _lifespan(worker: ModelWorker):
    import contextlib

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        worker.cancel_all()  # shutting down: running and queued generations stop between tokens

    return lifespan


class _ApiKey:
    """Pure ASGI middleware: /v1/* needs the bearer key when one is set (streaming untouched)."""

    def __init__(self, app, key: str | None):
        self.app, self.key = app, key

    async def __call__(self, scope, receive, send):
        if self.key and scope["type"] == "http" and scope["path"].startswith("/v1/"):
            headers = dict(scope.get("headers") or [])
            given = headers.get(b"authorization", b"").decode("latin-1")
            token = given[7:].strip() if given[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode(), self.key.encode()):
                err = ApiError(401, "missing or incorrect API key: send 'Authorization: Bearer <key>'",
                               code="invalid_api_key")
                await _error_response(err)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _read_json(request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body over {limit} bytes", code="request_too_large")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise ApiError(413, f"request body over {limit} bytes", code="request_too_large")
    try:
        return json.loads(bytes(data))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None


def _render(model, req: Request) -> list[int]:
    tok = model.tokenizer
    try:
        text = tok.apply_chat_template(req.messages) if req.kind == "chat" else req.prompt
    except GenerationError as exc:
        raise ApiError(400, str(exc), "messages") from None
    return tok.encode(text)


def _check_lengths(model, req: Request, ids: list[int], limits: Limits) -> int:
    """The max_new_tokens to use; refuses prompts and max_tokens over the limits (400)."""
    context = model.engine.max_context
    longest = min(limits.max_prompt_tokens or context - 1, context - 1)
    param = "messages" if req.kind == "chat" else "prompt"
    if not ids:
        raise ApiError(400, "the prompt is empty", param)
    if len(ids) > longest:
        raise ApiError(400, f"the prompt is {len(ids)} tokens; this server takes at most {longest} "
                       f"(context {context})", param, "context_length_exceeded")
    if req.max_tokens is not None and req.max_tokens > limits.max_tokens:
        raise ApiError(400, f"max_tokens {req.max_tokens} is over this server's limit {limits.max_tokens}",
                       "max_tokens")
    return min(req.max_tokens or limits.max_tokens, context - len(ids))


async def _sse(req: Request, rid: str, model_id: str, job: Job, events: asyncio.Queue):
    def event(body: dict) -> str:
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    try:
        if req.kind == "chat":
            yield event(chunk_body(req, rid, model_id, role=True))
        while True:
            kind, value = await events.get()
            if kind == "piece":
                yield event(chunk_body(req, rid, model_id, text=value))
            elif kind == "done":
                yield event(chunk_body(req, rid, model_id, finish=FINISH.get(value.finish_reason, "stop")))
                if req.include_usage:
                    yield event(chunk_body(req, rid, model_id, result=value))
                break
            else:
                yield event(_as_api_error(value).body())
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()  # the client went away (or we are done): stop generating


def _as_api_error(exc: BaseException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, EdgeSLMError):
        return ApiError(400, str(exc))
    return ApiError(500, f"generation failed: {type(exc).__name__}: {exc}", type="server_error")


def _unknown_model(name: str, served: str) -> ApiError:
    return ApiError(404, f"the model '{name}' does not exist here; this server serves '{served}'", "model",
                    "model_not_found")


def _model_card(model_id: str, created: float) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": int(created), "owned_by": "edgeslm"}
