"""edgeslm targets list / targets show / fit"""

from __future__ import annotations

import click

from . import cli
from ._common import emit_json, json_option


def _mem_summary(t) -> str:
    from ..targets.units import format_bytes

    m = t.memory
    if t.kind == "mcu":
        return (f"SRAM {format_bytes(m.sram)}" + (f" + PSRAM {format_bytes(m.psram)}" if m.psram else "")
                + f", flash {format_bytes(m.storage)}")
    return f"RAM {format_bytes(m.ram)}, storage {format_bytes(m.storage)}"


@cli.group("targets")
def targets_group():
    """Device targets: what each device runs (formats, precisions) and how much memory it has.

    \b
    Targets are TOML files found on a search path: $EDGESLM_TARGETS_PATH, then
    ~/.config/edgeslm/targets, then the ones shipped with edgeslm. Add a device by
    copying one (`edgeslm targets show raspberry-pi-5 --path`) and editing it.

    \b
    Examples:
      edgeslm targets list
      edgeslm targets show esp32-s3
      edgeslm targets show raspberry-pi-5 --json
    """


@targets_group.command("list")
@json_option
def targets_list(as_json):
    """List every target on the search path."""
    from ..targets import list_targets

    targets = list_targets()
    if as_json:
        emit_json([{"name": t.name, "title": t.title, "kind": t.kind, "cpu": f"{t.cpu.arch} x{t.cpu.cores}",
                    "ram": t.memory.ram, "storage": t.memory.storage, "budget": t.memory.budget,
                    "formats": [f.name for f in t.formats], "path": str(t.path)} for t in targets])
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col in ("target", "kind", "cpu", "memory", "formats, preferred first", "title"):
        table.add_column(col)
    for t in targets:
        table.add_row(t.name, t.kind, f"{t.cpu.arch} x{t.cpu.cores}", _mem_summary(t),
                      ", ".join(f.name for f in t.formats), t.title)
    Console(width=180).print(table)


@targets_group.command("show")
@click.argument("target")
@click.option("--path", "path_only", is_flag=True, help="Print only the file the target was read from.")
@json_option
def targets_show(target, path_only, as_json):
    """Show TARGET's profile: CPU, memory, accelerators, formats and precisions, limits, source."""
    from ..targets import load_target
    from ..targets.units import format_bytes

    t = load_target(target)
    if path_only:
        click.echo(str(t.path))
        return
    if as_json:
        emit_json(t.to_dict())
        return
    m, r = t.memory, t.runtime
    lines = [f"{t.name}: {t.title} ({t.kind})", f"  source       {t.source}",
             f"  file         {t.path}",
             f"  cpu          {t.cpu.arch}, {t.cpu.cores} cores" + (f" ({t.cpu.name})" if t.cpu.name else ""),
             f"  memory       {_mem_summary(t)}; model budget {format_bytes(m.budget)} RAM"
             + (f", {format_bytes(m.weights_budget)} flash for weights" if m.weights_in == "flash" else "")]
    for a in t.accelerators:
        lines.append(f"  accelerator  {a.name} ({a.kind})" + (f": {a.note}" if a.note else ""))
    for i, f in enumerate(t.formats):
        label = "formats" if i == 0 else ""
        lines.append(f"  {label:12} {i + 1}. {f.name}: {', '.join(f.precisions)}"
                     + (f" (computes in {f.compute})" if f.compute else "") + (f" — {f.note}" if f.note else ""))
    limits = [f"default context {r.default_context}", f"runtime overhead {format_bytes(r.overhead)}"]
    if r.static_shapes:
        limits.append("static shapes")
    if r.full_int8_only:
        limits.append("full int8 only")
    if r.max_graph_bytes:
        limits.append(f"max graph {format_bytes(r.max_graph_bytes)}")
    lines.append(f"  runtime      {', '.join(limits)}")
    click.echo("\n".join(lines))


@cli.command("fit")
@click.argument("model")
@click.option("--target", "-t", "target", required=True, help="Device target name (see `edgeslm targets list`).")
@click.option("-f", "--format", "fmt", default=None, help="Only this format [default: every one the target runs].")
@click.option("-p", "--precision", default=None, help="Only this precision.")
@click.option("--context-length", type=int, default=None,
              help="Tokens of KV cache to plan for [default: the target's default context, capped by the model's].")
@json_option
def fit_command(model, target, fmt, precision, context_length, as_json):
    """Forecast whether MODEL fits TARGET's memory, for every format and precision the target runs.

    \b
    Needs only the model's shapes: a GGUF header, a config.json or a bundle manifest
    (no torch). Memory = weights at the precision + KV cache at the context length
    + activations + the runtime's overhead; see docs/targets.md for the formula.
    Exits 1, with the byte figures and what would fit instead, when nothing fits.

    \b
    Examples:
      edgeslm fit smollm2-135m --target raspberry-pi-5
      edgeslm fit smollm2-135m --target esp32-s3
      edgeslm fit model.gguf --target android-arm64 --precision int4 --context-length 4096 --json
    """
    from ..targets import forecast, largest_context, load_target, refuse
    from ..targets.modelspec import read_spec
    from ..targets.plan import installed_exporters

    t = load_target(target)
    spec = read_spec(model)
    ctx = context_length or min(t.runtime.default_context, spec.context_length)
    if ctx > spec.context_length:
        raise click.BadParameter(f"{ctx} exceeds the model's own context ({spec.context_length})",
                                 param_hint="--context-length")
    exporters = installed_exporters(f.name for f in t.formats)
    rows = []
    for fs in t.formats:
        if fmt and fs.name != fmt:
            continue
        for p in fs.precisions:
            if precision and p != precision:
                continue
            f = forecast(spec, t, fs.name, p, ctx)
            if fs.name not in exporters:
                exp = "not installed"
            elif p in exporters[fs.name]:
                exp = "yes"
            else:
                exp = f"writes {'/'.join(exporters[fs.name])}"
            rows.append((f, largest_context(spec, t, fs.name, p), exp))
    if not rows:
        raise click.BadParameter(f"{t.name} runs no {fmt or ''} {precision or ''} combination; see "
                                 f"`edgeslm targets show {t.name}`", param_hint="--format/--precision")
    chosen = next((r for r in rows if r[0].fits), None)
    if as_json:
        emit_json({"model": spec.name, "parameters": spec.num_parameters, "target": t.name, "context": ctx,
                   "fits": chosen is not None,
                   "chosen": {"format": chosen[0].format, "precision": chosen[0].precision} if chosen else None,
                   "forecasts": [{**f.to_dict(), "largest_context": n, "exporter": e} for f, n, e in rows]})
    else:
        _print_table(spec, t, ctx, rows)
    if chosen is None:
        raise refuse(spec, t, rows[0][0])
    if not as_json:
        f, n, _ = chosen
        click.echo(f"fits: {spec.name} on {t.name} as {f.format} {f.precision} with a {ctx}-token context "
                   f"({f.ram_needed:,} B of {f.ram_budget:,} B RAM); largest context that fits: {n} tokens")


def _print_table(spec, t, ctx, rows) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..targets.units import format_bytes

    flash = t.memory.weights_in == "flash"
    title = (f"{spec.name}: {spec.num_parameters / 1e6:.1f}M parameters on {t.name} at {ctx} tokens "
             f"(RAM budget {format_bytes(t.memory.budget)}"
             + (f", flash for weights {format_bytes(t.memory.weights_budget)})" if flash else
                f", storage {format_bytes(t.memory.storage)})"))
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    cols = ["format", "precision", "weights", "KV cache", "activations", "runtime", "RAM needed", "fits",
            "largest ctx", "exporter"]
    for c in cols:
        table.add_column(c, justify="left" if c in ("format", "precision", "fits", "exporter") else "right")
    for f, n, exp in rows:
        ok = "[green]yes[/green]" if f.fits else "[red]no[/red] (" + ("flash" if not f.weights_fit and flash else
                                                                    "storage" if not f.weights_fit else "RAM") + ")"
        table.add_row(f.format, f.precision, format_bytes(f.weights), format_bytes(f.kv_cache),
                      format_bytes(f.activations), format_bytes(f.runtime),
                      format_bytes(f.ram_needed), ok, str(n), exp)
    Console(width=160).print(table)
