"""edgeslm models"""

from __future__ import annotations

import click

from . import cli
from ._common import emit_json, json_option


@cli.command("models")
@json_option
def models_command(as_json):
    """List built-in model names and the installed backend plugins."""
    from ..arch import supported_families
    from ..plugins import ENGINES, EXPORTERS, available
    from ..sources.catalog import BUILTINS

    data = {
        "builtin_models": {n: m.description for n, m in BUILTINS.items()},
        "architectures": supported_families(),
        "exporters": available(EXPORTERS),
        "engines": available(ENGINES),
    }
    if as_json:
        emit_json(data)
        return
    click.echo("Built-in models:")
    for name, desc in data["builtin_models"].items():
        click.echo(f"  {name:16} {desc}")
    click.echo(f"Architectures:  {', '.join(data['architectures'])}")
    click.echo(f"Exporters:      {', '.join(data['exporters']) or 'none (install a backend)'}")
    click.echo(f"Engines:        {', '.join(data['engines']) or 'none (install a backend)'}")
