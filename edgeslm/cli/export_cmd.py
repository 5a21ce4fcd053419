"""edgeslm export"""

from __future__ import annotations

from pathlib import Path

import click

from . import cli
from ._common import emit_json, json_option


@cli.command("export")
@click.argument("model")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Bundle directory to write (must be empty or absent, unless --overwrite).")
@click.option("-f", "--format", "fmt", default="onnx", show_default=True,
              help="Bundle format: the name of an installed exporter plugin (see `edgeslm models`).")
@click.option("-p", "--precision", default="fp32", show_default=True, help="Weight precision the exporter writes.")
@click.option("--context-length", type=int, default=None,
              help="Longest prompt + output the bundle accepts [default: min(2048, model's)].")
@click.option("--parity-tokens", type=int, default=32, show_default=True,
              help="Greedy tokens per parity prompt compared against the source.")
@click.option("--no-parity", is_flag=True, help="Skip the parity check (the manifest then records none).")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle directory.")
@json_option
def export_command(model, out_dir, fmt, precision, context_length, parity_tokens, no_parity, overwrite, as_json):
    """Export MODEL into a verified bundle.

    MODEL is a built-in name (smollm2-135m), a .gguf file, or a Hugging Face folder
    (config.json + *.safetensors + tokenizer.json).

    \b
    The export runs the source model and the exported one on fixed prompts and records
    greedy top-1 agreement, KL divergence, logit differences and perplexity in the
    manifest; an fp32 export that disagrees with its source fails.

    \b
    Example:
      edgeslm export smollm2-135m --format onnx -o out/smollm2-onnx
    """
    from ..exporting import export_model
    from ..progress import Steps

    bundle = export_model(model, out_dir, format=fmt, precision=precision, context_length=context_length,
                          parity=not no_parity, parity_tokens=parity_tokens, overwrite=overwrite,
                          steps=Steps(enabled=True))
    if as_json:
        emit_json(bundle.manifest)
        return
    from .bundle_cmds import print_summary

    print_summary(bundle)
