"""edgeslm run"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import cli
from ._common import emit_json, json_option, read_stdin_text


@cli.command("run")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--prompt", "-p", default=None, help="Prompt text; read from stdin when omitted.")
@click.option("--chat", is_flag=True, help="Wrap the prompt as a user message in the model's chat template.")
@click.option("--system", default=None, help="System message (with --chat).")
@click.option("--max-new-tokens", "-n", default=128, show_default=True, type=int)
@click.option("--temperature", "-t", default=0.0, show_default=True, type=float, help="0 = greedy.")
@click.option("--top-k", default=0, show_default=True, type=int, help="0 = off.")
@click.option("--top-p", default=1.0, show_default=True, type=float, help="1.0 = off.")
@click.option("--seed", default=None, type=int, help="Seed for sampling.")
@click.option("--stop", multiple=True, help="Stop string (repeatable).")
@click.option("--threads", default=None, type=int, help="Engine threads [default: runtime's choice].")
@click.option("--key", "keys", multiple=True, type=click.Path(path_type=Path),
              help="Trusted public key: refuse the bundle unless it is signed by one (repeatable).")
@click.option("--engine-option", "engine_options", multiple=True, metavar="KEY=VALUE",
              help="Engine option, e.g. device=GPU (openvino) or io_binding=false (onnx); repeatable.")
@json_option
def run_command(bundle, prompt, chat, system, max_new_tokens, temperature, top_k, top_p, seed, stop, threads,
                keys, engine_options, as_json):
    """Generate text from BUNDLE, streaming tokens as they come.

    \b
    Examples:
      edgeslm run out/smollm2-onnx --prompt "The capital of France is" -n 16
      edgeslm run out/smollm2-onnx --chat --prompt "Name three edge devices."
      echo "Once upon a time" | edgeslm run out/smollm2-onnx --temperature 0.8 --seed 1

    Metrics (time to first token, tokens/s) go to stderr; --json prints one result object.
    """
    import edgeslm

    from ..runtime.generator import GenerationConfig

    if prompt is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise click.UsageError("give --prompt TEXT or pipe the prompt on stdin")
        prompt = read_stdin_text()
    config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                              seed=seed, stop=tuple(stop))
    from ._common import parse_options

    options = {k: _typed(v) for k, v in parse_options(engine_options).items()}
    if threads:
        options["threads"] = threads
    with edgeslm.load(bundle, engine_options=options, trusted_keys=list(keys) or None) as model:
        if chat:
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            stream = model.stream_chat(messages, config)
        else:
            stream = model.stream(prompt, config)
        for piece in stream:
            if not as_json:
                click.echo(piece, nl=False)
                sys.stdout.flush()
        result = stream.result
    if as_json:
        emit_json({"text": result.text, "finish_reason": result.finish_reason, "token_ids": result.token_ids,
                   "metrics": result.metrics.to_dict()})
        return
    click.echo()
    m = result.metrics
    click.echo(f"[{m.prompt_tokens} prompt + {m.output_tokens} output tokens, first token {m.time_to_first_token_s * 1000:.0f} ms, "
               f"{m.decode_tokens_per_s:.1f} tok/s decode, finish: {result.finish_reason}]", err=True)


def _typed(value: str):
    """Engine options from the command line: true/false and integers become bool/int."""
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    try:
        return int(value)
    except ValueError:
        return value
