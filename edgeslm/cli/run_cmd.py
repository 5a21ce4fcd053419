"""edgeslm run"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import cli
from ..errors import GenerationError
from ._common import emit_json, json_option, read_stdin_text
from ._model_opts import engine_options, generation_options, open_model
from ._output import current


@cli.command("run")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--prompt", "-p", default=None, help="Prompt text; read from stdin when omitted (its trailing newline dropped).")
@click.option("--chat", is_flag=True, help="Prompt through the chat template (the default when the model has one).")
@click.option("--raw", is_flag=True, help="Plain completion: the prompt goes to the model as it is, no chat template.")
@click.option("--system", default=None, help="System message (chat mode only).")
@generation_options
@engine_options
@json_option
def run_command(bundle, prompt, chat, raw, system, config, engine_options, keys, as_json):
    """Generate text from BUNDLE, streaming tokens as they come.

    A model with a chat template (instruct models) gets the prompt as a user message in that
    template, as llama-cli and ollama do; --raw sends the text as it is (plain completion).

    \b
    Examples:
      edgeslm run out/smollm2-onnx --prompt "What is the capital of France?"
      edgeslm run out/smollm2-onnx --system "Answer in one word." -p "Largest planet?"
      edgeslm run out/smollm2-onnx --raw --prompt "The capital of France is" -n 16
      echo "Write a haiku about rain." | edgeslm run out/smollm2-onnx -t 0.8 --seed 1
      edgeslm run out/smollm2-onnx -p "Hi" --providers cuda,cpu        # a Jetson's GPU (onnxruntime-gpu)
      edgeslm run out/smollm2-ov -p "Hi" --engine-option device=GPU     # openvino on an Intel GPU

    Metrics (time to first token, tokens/s) go to stderr; --json prints one result object
    (text, finish_reason, token_ids, chat, metrics) and nothing else on stdout.
    """
    if chat and raw:
        raise click.UsageError("--chat and --raw exclude each other")
    if system is not None and raw:
        raise click.UsageError("--system has no effect with --raw (plain completion has no system message)")
    if prompt is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise click.UsageError("give --prompt TEXT or pipe the prompt on stdin")
        prompt = read_stdin_text().rstrip("\r\n")
    with open_model(bundle, engine_options, keys) as model:
        use_chat = not raw and (chat or model.has_chat_template)
        if not use_chat and system is not None:
            raise GenerationError("--system needs a chat template and this model has none")
        if use_chat:
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
                   "chat": use_chat, "metrics": result.metrics.to_dict()})
        return
    click.echo()
    current().note(summary_line(result))


def summary_line(result) -> str:
    m = result.metrics
    cached = f" ({m.cached_tokens} cached)" if m.cached_tokens else ""
    return (f"[{m.prompt_tokens} prompt{cached} + {m.output_tokens} output tokens, first token "
            f"{m.time_to_first_token_s * 1000:.0f} ms, {m.decode_tokens_per_s:.1f} tok/s decode, "
            f"finish: {result.finish_reason}]")
