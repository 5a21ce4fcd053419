"""Helpers shared by the CLI verbs."""

from __future__ import annotations

import sys
from pathlib import Path

import click


from ._output import emit_json  # noqa: F401  (the verbs import it from here)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON document on stdout: the result, or {\"error\": ...} with the "
                             "exit status.")(f)


def read_stdin_text() -> str:
    """All of stdin as text. Bytes that are not UTF-8 become surrogate escapes (as in argv) so the
    tokenizer refuses them in one line, whatever the locale's strictness."""
    buf = getattr(sys.stdin, "buffer", None)
    return buf.read().decode("utf-8", "surrogateescape") if buf is not None else sys.stdin.read()


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class OutputDir(click.Path):
    """A ``-o`` folder: refused at parse time when a file is in the way or it cannot be created."""

    def __init__(self, what: str = "output folder"):
        super().__init__(path_type=Path, file_okay=False)
        self.what = what

    def convert(self, value, param, ctx):
        from ..errors import OutputError
        from ..outputs import check_output_dir

        path = super().convert(value, param, ctx)
        try:
            return check_output_dir(path, self.what)
        except OutputError as exc:
            self.fail(str(exc), param, ctx)


def parse_options(pairs) -> dict[str, str]:
    """``("a=1", "b=x")`` -> ``{"a": "1", "b": "x"}``; backends convert the strings they read."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--option")
        out[key.strip()] = value.strip()
    return out
