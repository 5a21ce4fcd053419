"""edgeslm bench"""

from __future__ import annotations

from pathlib import Path

import click

from . import cli
from ._common import emit_json, human_bytes, json_option
from ._output import current


@cli.command("bench")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--prompt-tokens", default=128, show_default=True, type=click.IntRange(min=1), help="Prefill length.")
@click.option("--new-tokens", default=64, show_default=True, type=click.IntRange(min=1), help="Tokens decoded per run.")
@click.option("--runs", default=5, show_default=True, type=click.IntRange(min=1), help="Measured runs (after warm-up).")
@click.option("--warmup", default=1, show_default=True, type=click.IntRange(min=0), help="Unmeasured runs first.")
@click.option("--threads", default=None, type=click.IntRange(min=1), help="Engine threads [default: runtime's choice].")
@json_option
def bench_command(bundle, prompt_tokens, new_tokens, runs, warmup, threads, as_json):
    """Measure BUNDLE on this machine: prefill and decode tokens/s, time to first token,
    the Generator's own overhead, peak memory, bundle size (min / median / max over runs).

    \b
    Example:
      edgeslm bench out/smollm2-onnx --threads 2 --runs 5
    Timings are noisy on a shared machine; compare bundles in one session (benchmarks/run.py
    interleaves runs for that).
    """
    from rich.console import Console
    from rich.progress import Progress

    from ..bench import BenchConfig, bench_bundle

    config = BenchConfig(prompt_tokens=prompt_tokens, new_tokens=new_tokens, runs=runs, warmup=warmup,
                         threads=threads)
    # the bar is progress, not the result: stderr, off with -q
    with Progress(console=Console(stderr=True), transient=True, disable=current().quiet) as progress:
        task = progress.add_task("benchmarking", total=runs + warmup)
        result = bench_bundle(bundle, config, on_run=lambda i: progress.advance(task))
    if as_json:
        emit_json(result.to_dict())
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{result.format} / {result.precision}  ({human_bytes(result.bundle_bytes)}, "
                    f"threads {result.threads or 'default'}, {result.prompt_tokens}+{result.new_tokens} tokens)")
    for col in ("metric", "min", "median", "max"):
        t.add_column(col, justify="right" if col != "metric" else "left")
    rows = [("prefill tok/s", result.prefill_tokens_per_s, "{:.1f}"), ("decode tok/s", result.decode_tokens_per_s, "{:.1f}"),
            ("time to first token (ms)", result.time_to_first_token_s, "ms"),
            ("generator overhead", result.generator_overhead, "pct")]
    for name, s, fmt in rows:
        vals = [s.min, s.median, s.max]
        if fmt == "ms":
            cells = [f"{v * 1000:.1f}" for v in vals]
        elif fmt == "pct":
            cells = [f"{v:.1%}" for v in vals]
        else:
            cells = [fmt.format(v) for v in vals]
        t.add_row(name, *cells)
    Console().print(t)
    click.echo(f"peak RSS {human_bytes(result.peak_rss_bytes)}; machine: {result.machine['cpu']}, "
               f"{result.machine['cores']} cores")
