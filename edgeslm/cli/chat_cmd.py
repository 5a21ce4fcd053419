"""edgeslm chat"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import cli
from ..errors import EdgeSLMError
from ._model_opts import engine_options, generation_options, open_model
from ._output import current

HELP = """commands: /reset (forget the conversation)  /system TEXT (set the system message; /system alone clears it)
          /history  /exit (or Ctrl-D)   Ctrl-C stops a reply"""


@cli.command("chat")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--system", default=None, help="System message for the conversation (change it with /system).")
@generation_options
@engine_options
@click.option("--no-cache-reuse", is_flag=True,
              help="Prefill the whole conversation every turn (for comparison: time to first token then "
                   "grows with the history).")
@click.option("--stats", is_flag=True, help="After each reply, print tokens, cache reuse and timings on stderr.")
def chat_command(bundle, system, config, engine_options, keys, no_cache_reuse, stats):
    """Talk with BUNDLE's model turn by turn (needs a model with a chat template).

    The conversation so far stays in the engine's KV cache: each turn prefills only its new
    tokens, so the time to first token does not grow with the history. When the conversation
    outgrows the context, the oldest exchanges are dropped.

    \b
    In the chat:
      /reset          forget the conversation
      /system TEXT    set the system message (/system alone clears it)
      /history        show the conversation so far
      /exit           leave (or Ctrl-D); Ctrl-C stops a reply and keeps the chat open

    \b
    Examples:
      edgeslm chat out/smollm2-onnx
      edgeslm chat out/smollm2-onnx --system "Answer in one sentence." --stats
      edgeslm chat out/smollm2-onnx -t 0.7 --seed 1 -n 256
      printf 'Hi!\\nWhat did I just say?\\n' | edgeslm chat out/smollm2-onnx   # scripted, no prompt shown
    """
    from ..runtime.chat import ChatSession

    interactive = sys.stdin is not None and sys.stdin.isatty()
    with open_model(bundle, engine_options, keys, reuse_cache=not no_cache_reuse) as model:
        session = ChatSession(model, system=system, config=config)
        if interactive:
            _enable_line_editing()
            name = model.bundle.manifest.get("name") or Path(bundle).name
            current().note(f"chatting with {name} ({model.bundle.format}); /help for commands, Ctrl-D to leave")
        Repl(session, interactive, stats).loop()


class Repl:
    def __init__(self, session, interactive: bool, stats: bool):
        self.session = session
        self.interactive = interactive
        self.stats = stats

    def loop(self) -> None:
        while True:
            try:
                line = input("> " if self.interactive else "")
            except EOFError:
                if self.interactive:
                    click.echo(err=True)
                return
            except KeyboardInterrupt:  # at the prompt: a fresh line, not an exit
                click.echo("\n(Ctrl-D or /exit to leave)", err=True)
                continue
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if self.command(line) == "exit":
                    return
                continue
            self.reply(line)

    def command(self, line: str) -> str | None:
        name, _, arg = line.partition(" ")
        s = self.session
        if name in ("/exit", "/quit", "/bye"):
            return "exit"
        if name == "/reset":
            s.reset()
            click.echo("(conversation forgotten)", err=True)
        elif name == "/system":
            s.set_system(arg.strip() or None)
            click.echo(f"(system message {'set' if s.system else 'cleared'})", err=True)
        elif name == "/history":
            for m in s.messages():
                click.echo(f"{m['role']}: {m['content']}")
        elif name in ("/help", "/?"):
            click.echo(HELP, err=True)
        else:
            click.echo(f"unknown command {name}; {HELP}", err=True)
        return None

    def reply(self, text: str) -> None:
        try:
            stream = self.session.ask(text)
        except EdgeSLMError as exc:
            click.echo(f"error: {exc}", err=True)
            return
        except KeyboardInterrupt:  # before the first token: nothing was said
            self.session.answered("")
            click.echo("(stopped)", err=True)
            return
        try:
            for piece in stream:
                click.echo(piece, nl=False)
                sys.stdout.flush()
        except KeyboardInterrupt:
            stream.close()
            click.echo()
            click.echo("(stopped)", err=True)
            return
        except EdgeSLMError as exc:
            click.echo(f"\nerror: {exc}", err=True)
            return
        click.echo()
        if self.stats and stream.result is not None:
            from .run_cmd import summary_line

            click.echo(summary_line(stream.result), err=True)
        if self.session.dropped:
            click.echo(f"({self.session.dropped} oldest messages dropped to fit the context)", err=True)
            self.session.dropped = 0


def _enable_line_editing() -> None:
    try:
        import readline  # noqa: F401  (input() then gets history and line editing)
    except ImportError:  # pragma: no cover - Windows without pyreadline
        pass
