"""The ``edgeslm`` command. One module per verb; each registers itself on :data:`cli`.

Errors edgeslm raises on purpose (:class:`~edgeslm.errors.EdgeSLMError`) become one line on
stderr and exit status 1; usage errors exit 2 (click's convention); anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import sys

import click

from .. import __version__
from ..errors import EdgeSLMError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgeslm")
def cli():
    """Take a small language model to edge devices and keep it healthy there.

    \b
    Typical path:
      edgeslm export smollm2-135m --format onnx -o out/smollm2-onnx
      edgeslm run out/smollm2-onnx --chat --prompt "What is an edge device?"
      edgeslm verify out/smollm2-onnx
    """


def _register() -> None:
    """Import every verb module (``*_cmd.py`` / ``*_cmds.py`` here); importing one adds its
    command to :data:`cli`. Then add the verbs installed plugins declare (entry point group
    ``edgeslm.commands``, e.g. the LiteRT plugin's ``micro``); a plugin never replaces a core verb.
    The modules import nothing heavy at import time."""
    import importlib
    import pkgutil

    from ..plugins import commands

    for info in pkgutil.iter_modules(__path__):
        if info.name.endswith(("_cmd", "_cmds")):
            importlib.import_module(f"{__name__}.{info.name}")
    for name in _plugin_verbs:  # re-read on every call: what is installed may have changed
        cli.commands.pop(name, None)
    _plugin_verbs.clear()
    for name, command in commands().items():
        if name not in cli.commands and isinstance(command, click.Command):
            cli.add_command(command, name)
            _plugin_verbs.add(name)


_plugin_verbs: set[str] = set()


def main(argv: list[str] | None = None) -> int:
    _register()
    try:
        cli.main(args=argv, prog_name="edgeslm", standalone_mode=False)
    except EdgeSLMError as exc:
        click.echo(f"error: {exc}", err=True)
        return 1
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return 0


def entry() -> None:  # pragma: no cover - console script shim
    sys.exit(main())
