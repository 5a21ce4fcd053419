"""The OpenAI wire format: request validation and response objects (no web framework here).

Requests are checked field by field; anything wrong is an :class:`ApiError` that the app turns
into ``{"error": {"message", "type", "param", "code"}}`` with its HTTP status, as OpenAI does.
Only what this server honours is accepted: a field that would change the answer and is not
implemented (``n > 1``, ``tools``, ``logprobs`` ...) is refused rather than silently ignored.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..runtime.generator import GenerationConfig, GenerationResult

#: fields accepted and ignored: they do not change what the model generates
IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "prompt_cache_key",
           "safety_identifier"}
SAMPLING = {"temperature", "top_p", "seed", "stop", "max_tokens", "stream", "stream_options", "n",
            "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "model"}
CHAT_FIELDS = SAMPLING | {"messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice",
                          "response_format"}
COMPLETION_FIELDS = SAMPLING | {"prompt", "echo", "suffix", "best_of"}
ROLES = ("system", "developer", "user", "assistant")


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class Limits:
    max_tokens: int = 1024  # the largest max_tokens a request may ask for
    max_prompt_tokens: int | None = None  # longest prompt after the chat template (None: context - 1)
    max_body_bytes: int = 1 << 20  # request bodies above this are refused (413)


@dataclass
class Request:
    """A validated request: what to render, how to sample, how to answer."""

    kind: str  # "chat" | "completion"
    model: str
    messages: list[dict[str, str]] = field(default_factory=list)  # chat
    prompt: str = ""  # completion
    max_tokens: int | None = None  # None: up to the limit / the context
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False

    def config(self, max_new_tokens: int) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                                seed=self.seed, stop=self.stop)


def parse_chat(body: Any) -> Request:
    body = _object(body, CHAT_FIELDS)
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "'messages' must be a non-empty array of {role, content} objects", "messages")
    messages = [_message(m, i) for i, m in enumerate(raw)]
    for name in ("tools", "tool_choice"):
        if body.get(name):
            raise ApiError(400, f"'{name}' is not supported by this server", name, "unsupported_parameter")
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise ApiError(400, "only response_format {'type': 'text'} is supported", "response_format",
                       "unsupported_parameter")
    if body.get("top_logprobs"):
        raise ApiError(400, "'top_logprobs' is not supported by this server", "top_logprobs", "unsupported_parameter")
    req = Request(kind="chat", model="", messages=messages)
    if body.get("max_completion_tokens") is not None:
        body = {**body, "max_tokens": body["max_completion_tokens"]}
        key = "max_completion_tokens"
    else:
        key = "max_tokens"
    return _sampling(body, req, key)


def parse_completion(body: Any) -> Request:
    body = _object(body, COMPLETION_FIELDS)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "'prompt' must be a string (or an array holding one string)", "prompt")
    if not prompt:
        raise ApiError(400, "'prompt' is empty", "prompt")
    for name, ok in (("echo", lambda v: v in (None, False)), ("suffix", lambda v: v in (None, "")),
                     ("best_of", lambda v: v in (None, 1))):
        if not ok(body.get(name)):
            raise ApiError(400, f"'{name}' is not supported by this server", name, "unsupported_parameter")
    req = Request(kind="completion", model="", prompt=prompt, max_tokens=16)  # OpenAI's default for completions
    return _sampling(body, req, "max_tokens")


def _object(body: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    unknown = sorted(k for k in body if k not in allowed and k not in IGNORED)
    if unknown:
        raise ApiError(400, f"unrecognized request argument supplied: {', '.join(unknown)}", unknown[0])
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required (GET /v1/models lists the one served)", "model")
    return body


def _message(m: Any, i: int) -> dict[str, str]:
    param = f"messages.[{i}]"
    if not isinstance(m, dict) or m.get("role") not in ROLES:
        raise ApiError(400, f"message {i} needs a role ({', '.join(ROLES)})", f"{param}.role")
    content = m.get("content")
    if isinstance(content, list):  # [{"type": "text", "text": "..."}] parts
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            raise ApiError(400, f"message {i}: only text content parts are supported", f"{param}.content")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise ApiError(400, f"message {i} needs string 'content'", f"{param}.content")
    role = "system" if m["role"] == "developer" else m["role"]
    return {"role": role, "content": content}


def _number(body, name, lo, hi, default, kind=float):
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)):
        raise ApiError(400, f"'{name}' must be {'an integer' if kind is int else 'a number'}", name)
    if not lo <= v <= hi:
        raise ApiError(400, f"'{name}' must be between {lo} and {hi}, got {v}", name)
    return kind(v)


def _sampling(body: dict[str, Any], req: Request, max_key: str) -> Request:
    req.model = body["model"]
    req.temperature = _number(body, "temperature", 0, 2, 1.0)
    req.top_p = _number(body, "top_p", 0, 1, 1.0)
    if req.top_p == 0:
        raise ApiError(400, "'top_p' must be > 0", "top_p")
    req.seed = _number(body, "seed", 0, 2**63 - 1, None, int)
    mt = body.get("max_tokens")
    if mt is not None:
        if isinstance(mt, bool) or not isinstance(mt, int) or mt < 1:
            raise ApiError(400, f"'{max_key}' must be a positive integer", max_key)
        req.max_tokens = mt
    if body.get("n") not in (None, 1):
        raise ApiError(400, "only 'n': 1 is supported (one choice per request)", "n", "unsupported_parameter")
    for name in ("presence_penalty", "frequency_penalty"):
        if _number(body, name, -2, 2, 0) != 0:
            raise ApiError(400, f"'{name}' is not supported by this server (only 0)", name, "unsupported_parameter")
    if body.get("logit_bias"):
        raise ApiError(400, "'logit_bias' is not supported by this server", "logit_bias", "unsupported_parameter")
    if body.get("logprobs") not in (None, False):
        raise ApiError(400, "'logprobs' is not supported by this server", "logprobs", "unsupported_parameter")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or len(stop) > 4
                             or not all(isinstance(s, str) and s for s in stop)):
        raise ApiError(400, "'stop' must be a string or an array of up to 4 non-empty strings", "stop")
    req.stop = tuple(stop or ())
    stream = body.get("stream")
    if stream not in (None, True, False):
        raise ApiError(400, "'stream' must be a boolean", "stream")
    req.stream = bool(stream)
    opts = body.get("stream_options")
    if opts is not None:
        if not req.stream or not isinstance(opts, dict):
            raise ApiError(400, "'stream_options' needs 'stream': true and an object value", "stream_options")
        req.include_usage = bool(opts.get("include_usage"))
    return req


# -- responses ---------------------------------------------------------------------------
FINISH = {"eos": "stop", "stop": "stop", "length": "length", "cancelled": "stop"}


def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def usage(result: GenerationResult) -> dict[str, Any]:
    m = result.metrics
    return {"prompt_tokens": m.prompt_tokens, "completion_tokens": m.output_tokens,
            "total_tokens": m.prompt_tokens + m.output_tokens,
            "prompt_tokens_details": {"cached_tokens": m.cached_tokens}}


def completion_body(req: Request, rid: str, model: str, result: GenerationResult) -> dict[str, Any]:
    finish = FINISH.get(result.finish_reason, "stop")
    if req.kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": result.text}, "logprobs": None,
                  "finish_reason": finish}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": result.text, "logprobs": None, "finish_reason": finish}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": [choice],
            "usage": usage(result)}


def chunk_body(req: Request, rid: str, model: str, text: str | None = None, finish: str | None = None,
               role: bool = False, result: GenerationResult | None = None) -> dict[str, Any]:
    """One streamed event: a text piece, the role opener, the finish, or (choices []) the usage."""
    if req.kind == "chat":
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
        choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        obj = "chat.completion.chunk"
    else:
        choices = [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}]
        obj = "text_completion"
    body = {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": choices}
    if result is not None:
        body["choices"] = []
        body["usage"] = usage(result)
    elif req.include_usage:
        body["usage"] = None
    return body
