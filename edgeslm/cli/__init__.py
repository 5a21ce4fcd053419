"""The ``edgeslm`` command. One module per verb; each registers itself on :data:`cli`.

Errors edgeslm raises on purpose (:class:`~edgeslm.errors.EdgeSLMError`) become one line on
stderr and exit status 1; usage errors (bad flags, bad sampling values) exit 2 (click's
convention); Ctrl-C exits 130; anything else is a bug and keeps its traceback. With ``--json``
the error is also the one JSON document on stdout: ``{"error": ..., "type": ..., "exit_code": ...}``.
Every verb takes -q/-v (``_output.py``); library noise is off unless -v (``_noise.py``).
"""

from __future__ import annotations

import sys

import click

from .. import __version__
from ..errors import EdgeSLMError
from . import _noise, _output


@click.group(cls=_output.VerbGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
    command to :data:`cli`. The modules import nothing heavy at import time."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name.endswith(("_cmd", "_cmds")):
            importlib.import_module(f"{__name__}.{info.name}")


def main(argv: list[str] | None = None) -> int:
    _register()
    argv = list(sys.argv[1:] if argv is None else argv)
    _output.reset(argv)
    try:
        cli.main(args=argv, prog_name="edgeslm", standalone_mode=False)
    except EdgeSLMError as exc:
        return _fail(str(exc), 1, type(exc).__name__)
    except click.exceptions.Abort:
        return _fail("aborted", 130, "Abort")
    except click.exceptions.Exit as exc:  # --help, --version
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        _output.emit_error(exc.format_message(), exc.exit_code,
                           "UsageError" if isinstance(exc, click.UsageError) else type(exc).__name__)
        return exc.exit_code
    except KeyboardInterrupt:
        return _fail("interrupted", 130, "KeyboardInterrupt")
    finally:
        _noise.restore()
    return 0


def _fail(message: str, code: int, kind: str) -> int:
    click.echo(f"error: {message}" if code == 1 else message, err=True)
    _output.emit_error(message, code, kind)
    return code


def entry() -> None:  # pragma: no cover - console script shim
    sys.exit(main())
