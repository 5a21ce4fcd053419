"""edgeslm export"""

from __future__ import annotations

from pathlib import Path

import click

from . import cli
from ._common import OutputDir, emit_json, json_option, parse_options
from ._output import current


@cli.command("export")
@click.argument("model")
@click.option("-o", "--output", "out_dir", required=True, type=OutputDir("bundle folder"),
              help="Bundle directory to write (must be empty or absent, unless --overwrite).")
@click.option("-t", "--target", default=None,
              help="Device target (see `edgeslm targets list`): picks format, precision and context, "
                   "and refuses a model that cannot fit.")
@click.option("-f", "--format", "fmt", default=None,
              help="Bundle format: an installed exporter plugin [default: the target's choice, else onnx].")
@click.option("-p", "--precision", default=None,
              help="Weight precision [default: the target's best that the exporter writes, else the exporter's first (onnx: fp32, coreml: fp16)].")
@click.option("--context-length", type=int, default=None,
              help="Longest prompt + output the bundle accepts [default: the target's default context, "
                   "else min(2048, model's)].")
@click.option("--allow-fallback", is_flag=True,
              help="With --target: when the target's preferred format has no installed exporter, use the next "
                   "format it runs instead of stopping.")
@click.option("--sign", "sign_key", default=None, type=click.Path(path_type=Path),
              help="Private key (from `edgeslm keys generate`): sign the bundle and verify the signature.")
@click.option("--parity-tokens", type=int, default=32, show_default=True,
              help="Greedy tokens per parity prompt compared against the source.")
@click.option("--no-parity", is_flag=True, help="Skip the parity check (the manifest then records none).")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle directory.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Backend exporter option, e.g. group_size=128 (openvino int4) or accuracy_level=0 (onnx "
                   "int4); repeatable. Each backend's doc lists its options.")
@json_option
def export_command(model, out_dir, target, fmt, precision, context_length, allow_fallback, sign_key, parity_tokens,
                   no_parity, overwrite, options, as_json):
    """Export MODEL into a verified bundle.

    MODEL is a built-in name (smollm2-135m), a .gguf file, or a Hugging Face folder
    (config.json + *.safetensors + tokenizer.json).

    \b
    With --target, the device's profile chooses format, precision and context length;
    the fit forecast runs first and refuses, with the byte figures, a model that cannot
    fit. Target and forecast are recorded in the manifest.

    \b
    The export runs the source model and the exported one on fixed prompts and records
    greedy top-1 agreement, KL divergence, logit differences and perplexity in the
    manifest; an fp32 export that disagrees with its source fails.

    \b
    Examples:
      edgeslm export smollm2-135m --target raspberry-pi-5 -o out/smollm2-pi5
      edgeslm keys generate release
      edgeslm export smollm2-135m --target x86-64-generic --sign release.key -o out/smollm2-x86
      edgeslm export smollm2-135m --format onnx -o out/smollm2-onnx
    """
    steps = current().steps()
    options = parse_options(options)
    if target is not None:
        from ..targets.plan import export_for_target

        # Progress and notes go to stderr so --json output stays parseable.
        bundle, _ = export_for_target(model, out_dir, target, format=fmt, precision=precision,
                                      context_length=context_length, allow_fallback=allow_fallback,
                                      sign_key=sign_key, parity=not no_parity, parity_tokens=parity_tokens,
                                      overwrite=overwrite, steps=steps, echo=current().note,
                                      options=options)
    else:
        if allow_fallback:
            raise click.UsageError("--allow-fallback needs --target")
        from ..exporting import export_model

        bundle = export_model(model, out_dir, format=fmt or "onnx", precision=precision,
                              context_length=context_length, parity=not no_parity, parity_tokens=parity_tokens,
                              overwrite=overwrite, steps=steps, options=options)
        if sign_key is not None:
            from ..bundle import Bundle
            from ..bundle.signing import load_private_key, sign_bundle, verify_bundle_signature

            key = load_private_key(sign_key)
            kid = sign_bundle(bundle.path, key)
            verify_bundle_signature(bundle.path, [key.public_key()])
            current().note(f"signed with key {kid}")
            bundle = Bundle.open(bundle.path, verify=False)
    if as_json:
        emit_json(bundle.manifest)
        return
    from .bundle_cmds import print_summary

    print_summary(bundle)
