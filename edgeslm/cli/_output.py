"""What every verb shares about output: -q/--quiet, -v/--verbose, --json, progress, notes.

Every command on :data:`edgeslm.cli.cli` is a :class:`Verb` (the group's ``command_class``), so
each one takes ``-q`` and ``-v`` without declaring them, and the group takes them too
(``edgeslm -v export ...`` = ``edgeslm export ... -v``); a plain click command added with
``cli.add_command`` (a plugin's verb) is adopted the same way. The settings of the running
invocation live in :data:`OUTPUT`:

=============  =================================================================================
(default)      results on stdout; our progress (a spinner per step on a terminal, a closing line
               for each step of a second or more) and notes on stderr; third-party warnings,
               logs and progress bars hidden (``_noise.py``)
``-q``         results only: no progress, no notes; errors still print
``-v``         our progress and notes, plus the libraries' own warnings, logs and bars
``--json``     stdout holds exactly one JSON document: the result, or ``{"error": ...}`` with
               the exit status (stderr keeps progress and the one ``error:`` line)
=============  =================================================================================
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from typing import Any

import click


@dataclasses.dataclass
class Output:
    quiet: bool = False
    verbose: bool = False
    json: bool = False
    #: where results go: the stdout of the process when the invocation started
    stdout: Any = None
    #: a JSON result was printed (an error after it goes to stderr only: one document per run)
    emitted: bool = False

    def steps(self):
        """The progress reporter for this invocation's steps (stderr; off with -q): a spinner on a
        terminal, and a closing line for each step that took a second or more
        (``$EDGESLM_PROGRESS_MIN_S`` changes that bar; the test suite raises it so that what a
        test reads on stderr does not depend on how busy the machine is)."""
        import os

        from ..progress import Steps

        try:
            min_s = float(os.environ.get("EDGESLM_PROGRESS_MIN_S", "1"))
        except ValueError:
            min_s = 1.0
        return Steps(enabled=not self.quiet, min_report_s=min_s)

    def note(self, message: str) -> None:
        """A line for the person at the terminal (stderr), not part of the result; off with -q."""
        if not self.quiet:
            click.echo(message, err=True)


#: the settings of the invocation that is running (reset by :func:`edgeslm.cli.main`)
OUTPUT = Output()


def reset(argv: list[str]) -> None:
    """Fresh settings for one invocation. ``--json``/``-q``/``-v`` are read from ``argv`` here
    too, so an error raised while click is still parsing (a usage error) is already reported the
    way the user asked; the parsed values replace these when the verb starts."""
    global OUTPUT
    args = argv[:argv.index("--")] if "--" in argv else argv
    OUTPUT = Output(quiet="-q" in args or "--quiet" in args, verbose="-v" in args or "--verbose" in args,
                    json="--json" in args, stdout=sys.stdout)


def emit_json(data: Any) -> None:
    """The verb's result as JSON, on the real stdout (see :meth:`Verb.invoke`)."""
    click.echo(json.dumps(data, indent=2, default=str), file=OUTPUT.stdout or sys.stdout)
    OUTPUT.emitted = True


def current() -> Output:
    return OUTPUT


#: the options every verb and group takes
GROUP_FLAGS = ("-q", "--quiet", "-v", "--verbose")


def _add_flags(cmd: click.Command) -> None:
    cmd.params.append(click.Option(["-q", "--quiet", "_quiet"], is_flag=True,
                                   help="Print only the result (and errors): no progress, no notes."))
    cmd.params.append(click.Option(["-v", "--verbose", "_verbose"], is_flag=True,
                                   help="Also show the libraries' own warnings, logs and progress bars."))


def _collect(ctx: click.Context) -> tuple[bool, bool]:
    """Take -q/-v out of ``ctx.params`` (the callback does not declare them) and OR them into
    ``ctx.meta``, which the contexts of a group and its verbs share."""
    flags = ctx.meta.setdefault("edgeslm.output", {"quiet": False, "verbose": False})
    flags["quiet"] |= bool(ctx.params.pop("_quiet", False))
    flags["verbose"] |= bool(ctx.params.pop("_verbose", False))
    return flags["quiet"], flags["verbose"]


def _settle(ctx: click.Context) -> None:
    """Set :data:`OUTPUT` from -q/-v (given here or on a parent group) and --json, and apply it."""
    from ._noise import apply

    quiet, verbose = _collect(ctx)
    if quiet and verbose:
        raise click.UsageError("-q/--quiet and -v/--verbose exclude each other")
    OUTPUT.quiet, OUTPUT.verbose = quiet, verbose
    OUTPUT.json = bool(ctx.params.get("as_json"))
    apply(verbose)


class Verb(click.Command):
    """A command that takes -q/-v (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _add_flags(self)

    def invoke(self, ctx: click.Context) -> Any:
        _settle(ctx)
        if not OUTPUT.json:
            return super().invoke(ctx)
        # stdout is for the one JSON document: whatever a library prints (NNCF's progress bar,
        # a converter's print()) goes to stderr while the verb runs
        with contextlib.redirect_stdout(sys.stderr):
            return super().invoke(ctx)


class VerbGroup(click.Group):
    """A group whose commands are :class:`Verb` and whose subgroups are VerbGroups. It takes -q/-v
    itself (``edgeslm -v VERB``); its verbs read them from their parent context."""

    command_class = Verb
    group_class = type  # subgroups are of this same class

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _add_flags(self)

    def invoke(self, ctx: click.Context) -> Any:
        _collect(ctx)  # the group's own callback takes no -q/-v; its verbs read them from ctx.meta
        return super().invoke(ctx)

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        """A command made elsewhere (a plugin's verb, built as a plain click.Command) joins with
        the same -q/-v handling as ours."""
        if not isinstance(cmd, (Verb, VerbGroup)) and not getattr(cmd, "_edgeslm_flags", False):
            adopt(cmd)
        super().add_command(cmd, name)


def adopt(cmd: click.Command) -> None:
    """Give a plain click command (or group, recursively) the -q/-v options and their handling."""
    _add_flags(cmd)
    cmd._edgeslm_flags = True
    plain_invoke = cmd.invoke
    if isinstance(cmd, click.Group):
        def invoke(ctx):
            _collect(ctx)
            return plain_invoke(ctx)
        for sub in cmd.commands.values():
            if not isinstance(sub, (Verb, VerbGroup)) and not getattr(sub, "_edgeslm_flags", False):
                adopt(sub)
    else:
        def invoke(ctx):
            _settle(ctx)
            if not OUTPUT.json:
                return plain_invoke(ctx)
            with contextlib.redirect_stdout(sys.stderr):
                return plain_invoke(ctx)
    cmd.invoke = invoke


def emit_error(message: str, exit_code: int, kind: str) -> None:
    """With --json, and no result printed yet: the error as the one JSON document on stdout."""
    if OUTPUT.json and not OUTPUT.emitted:
        emit_json({"error": message, "type": kind, "exit_code": exit_code})
