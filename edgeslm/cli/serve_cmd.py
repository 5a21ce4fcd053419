"""edgeslm serve"""

from __future__ import annotations

from pathlib import Path

import click

from . import cli
from ._model_opts import engine_options, open_model
from ._output import current


def serve_options(f):
    """--host, --port, --api-key, --model-name, --max-queue, limits -> ``serve`` dict."""
    for opt in reversed([
        click.option("--host", default="127.0.0.1", show_default=True,
                     help="Address to listen on; 0.0.0.0 exposes the server to the network (set --api-key)."),
        click.option("--port", default=8000, show_default=True, type=int),
        click.option("--api-key", envvar="EDGESLM_API_KEY", default=None,
                     help="Require 'Authorization: Bearer KEY' on /v1/* [env EDGESLM_API_KEY]."),
        click.option("--model-name", default=None, help="Model id clients send [default: the bundle's model name]."),
        click.option("--max-queue", default=8, show_default=True, type=int,
                     help="Requests waiting behind the running one; beyond it: 429 with Retry-After."),
        click.option("--max-tokens-limit", default=1024, show_default=True, type=int,
                     help="Largest max_tokens a request may ask for (also the default for chat)."),
        click.option("--max-prompt-tokens", default=None, type=int,
                     help="Longest prompt after the chat template [default: the context - 1]."),
        click.option("--max-body-bytes", default=1 << 20, show_default=True, type=int,
                     help="Larger request bodies get 413."),
    ]):
        f = opt(f)
    return f


def serve_config(bundle_model, model_name, api_key, max_queue, max_tokens_limit, max_prompt_tokens, max_body_bytes):
    from ..server import Limits, ServeConfig

    if max_queue < 0 or max_tokens_limit < 1 or max_body_bytes < 1 or (max_prompt_tokens or 1) < 1:
        raise click.UsageError("--max-queue must be >= 0 and the other limits >= 1")
    name = model_name or (bundle_model.bundle.manifest.get("model") or {}).get("name") or bundle_model.bundle.path.name
    return ServeConfig(model_id=name, api_key=api_key or None, max_queue=max_queue,
                       limits=Limits(max_tokens=max_tokens_limit, max_prompt_tokens=max_prompt_tokens,
                                     max_body_bytes=max_body_bytes))


@cli.command("serve")
@click.argument("bundle", type=click.Path(path_type=Path))
@serve_options
@engine_options
@click.option("--no-cache-reuse", is_flag=True, help="Prefill every request's whole prompt (no KV-cache prefix reuse).")
def serve_command(bundle, host, port, api_key, model_name, max_queue, max_tokens_limit, max_prompt_tokens,
                  max_body_bytes, engine_options, keys, no_cache_reuse):
    """Serve BUNDLE over an OpenAI-compatible HTTP API (loopback by default).

    \b
    Endpoints: POST /v1/chat/completions, POST /v1/completions (both stream with
    "stream": true), GET /v1/models, GET /health. Requests run one at a time, first come
    first served; a conversation that grows turn by turn reuses the KV cache of its prefix.

    \b
    Examples:
      edgeslm serve out/smollm2-onnx                       # http://127.0.0.1:8000/v1
      EDGESLM_API_KEY=s3cret edgeslm serve out/smollm2-onnx --host 0.0.0.0 --port 8080
      curl -s 127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
          -d '{"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi!"}]}'
      python -c 'import openai; c = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="-");
                 print(c.chat.completions.create(model="smollm2-135m",
                       messages=[{"role": "user", "content": "Hi!"}]).choices[0].message.content)'

    To publish the requests' telemetry to a fleet broker, run `edgeslm agent --openai HOST:PORT`.
    SIGTERM or Ctrl-C stops cleanly: no new connections, running replies end within 5 s.
    Needs the serve extra: pip install 'edgeslm[serve]'.
    """
    from ..server import run_server

    with open_model(bundle, engine_options, keys, reuse_cache=not no_cache_reuse) as model:
        config = serve_config(model, model_name, api_key, max_queue, max_tokens_limit, max_prompt_tokens,
                              max_body_bytes)
        current().note(f"serving {config.model_id} ({model.bundle.format}) on http://{host}:{port}/v1"
                   f"{' (API key required)' if config.api_key else ''}; Ctrl-C to stop")
        run_server(model, config, host=host, port=port)
    current().note("server stopped")
