"""edgeslm info / edgeslm verify"""

from __future__ import annotations

from pathlib import Path

import click

from . import cli
from ._common import emit_json, human_bytes, json_option
from ._output import current


def print_summary(bundle) -> None:
    from rich.console import Console
    from rich.table import Table

    from rich.markup import escape

    m = bundle.manifest  # validated types; optional fields may be absent
    model = m.get("model") or {}
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_row("bundle", escape(str(bundle.source)))
    params = model.get("parameters")
    t.add_row("model", escape(f"{model.get('name', '?')} ({model.get('architecture', '?')}"
                              + (f", {params / 1e6:.1f}M params)" if params is not None else ")")))
    t.add_row("format", escape(f"{m['format']} / {m.get('precision', '?')}"))
    t.add_row("context", str(m.get("context_length")))
    if m.get("target"):
        t.add_row("target", escape(str(m["target"])))
    t.add_row("files", f"{len(m['files'])} files, {human_bytes(bundle.bytes)}")
    t.add_row("signed", "yes" if (bundle.path / "manifest.json.sig").exists() else "no")
    p = m.get("parity")
    if p and "top1_agreement" in p:
        verdict = "[green]passed[/green]" if p.get("passed") else "[red]FAILED[/red]"
        ppl = ""
        if p.get("perplexity_export") is not None and p.get("perplexity_source") is not None:
            ppl = f", perplexity {p['perplexity_export']:.2f} (source {p['perplexity_source']:.2f})"
        t.add_row("parity", f"{verdict}: top-1 agreement {p['top1_agreement']:.1%} over {p.get('tokens', '?')} tokens, "
                            f"KL mean {p.get('kl_mean', float('nan')):.2e}, "
                            f"max |dlogit| {p.get('max_abs_logit_diff', float('nan')):.2e}{ppl}")
    else:
        t.add_row("parity", "not checked")
    Console().print(t)


@cli.command("info")
@click.argument("bundle", type=click.Path(path_type=Path))
@json_option
def info_command(bundle, as_json):
    """Describe BUNDLE: model, format, precision, files, parity results."""
    from ..bundle import Bundle

    b = Bundle.open(bundle, verify=False)
    if as_json:
        emit_json(b.manifest)
    else:
        print_summary(b)


@cli.command("verify")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--key", "keys", multiple=True, type=click.Path(path_type=Path),
              help="Trusted public key; the bundle must carry a valid signature by one of them.")
@click.option("--parity", "rerun", is_flag=True,
              help="Re-run the parity check against the source model (needs the export extra).")
@click.option("--source", default=None, help="Source model for --parity [default: the manifest's model name].")
@click.option("--on-device", "on_device", is_flag=True,
              help="Replay the parity reference stored in the bundle through this machine's engine (no torch, "
                   "no source): top-1 agreement and KL against the source; fails below the bundle's threshold.")
@click.option("--min-agreement", type=click.FloatRange(0.0, 1.0), default=None,
              help="With --on-device: the top-1 agreement required [default: the exporter's threshold for the "
                   "bundle's precision, else the agreement measured at export less 0.05].")
@click.option("--vendor", "vendor", is_flag=True,
              help="Also open the bundle in the format's own LLM runtime (onnxruntime-genai, OpenVINO GenAI, "
                   "LiteRT-LM; those installed) and check its greedy tokens equal this engine's (8 tokens).")
@json_option
def verify_command(bundle, keys, rerun, source, on_device, min_agreement, as_json, vendor=False):
    """Check BUNDLE: every file's sha256, the signature (with --key), that the engine opens it
    and produces finite logits, and optionally parity against the source model (--parity, on
    the workstation) or against the reference the bundle carries (--on-device, on the device).

    \b
    Examples:
      edgeslm verify out/smollm2-onnx
      edgeslm verify out/smollm2-onnx --on-device        # on the Pi: are this CPU's kernels still right?
      edgeslm verify out/smollm2-onnx --parity           # on the workstation, against the source model
      edgeslm verify out/smollm2-onnx --vendor           # onnxruntime-genai gives the same greedy tokens

    Exits non-zero, naming the file, when anything does not match, and when --on-device or
    --parity agreement is below the threshold.
    """
    from ..bundle import Bundle

    if min_agreement is not None and not on_device:
        raise click.UsageError("--min-agreement applies to --on-device only")
    # One read of the manifest: the signature (with --key) is checked over the bytes that are then
    # parsed, and with keys the engine runs a private copy made while hashing the files.
    steps = current().steps()
    with steps.step(f"Checking {bundle}: every file's sha256" + (", the signature" if keys else "")):
        b = Bundle.open(bundle, verify=True, trusted_keys=list(keys) or None)
    try:
        result = {"bundle": str(b.source), "files": len(b.manifest["files"]), "hashes": "ok"}
        if keys:
            result["signature"] = "ok"
        _check_engine(b, result, rerun, source, steps, on_device, min_agreement, vendor)
    finally:
        b.close()
    _report_verify(b, result, keys, rerun, as_json)


def _check_engine(b, result: dict, rerun: bool, source, steps, on_device: bool = False,
                  min_agreement: float | None = None, vendor: bool = False) -> None:
    """Open the engine on the (verified) bundle, check one prefill, optionally re-run parity
    against the source (``rerun``) or against the bundle's stored reference (``on_device``)."""
    import numpy as np

    from ..errors import BundleError
    from ..plugins import get_engine

    with steps.step(f"Opening the {b.format} engine and running one prefill"):
        engine = get_engine(b.format)(b)
    try:
        tok = b.load_tokenizer()
        logits = engine.prefill(tok.encode("Hello") or [0])
        if logits.shape != (b.spec.vocab_size,) or not np.all(np.isfinite(logits)):
            raise BundleError(f"{b.source}: the engine produced invalid logits (shape {logits.shape})")
        result["engine"] = "ok"
        if rerun:
            from ..exporting import check_parity
            from ..sources import load_source

            model = b.manifest.get("model") or {}
            if not (source or model.get("name")):
                raise BundleError(f"{b.source}: the manifest names no source model; pass --source MODEL")
            with steps.step(f"Loading the source {source or model['name']}"):
                src = load_source(source or model["name"])
            if src.sha256 != model.get("source_sha256"):
                click.echo("warning: the source's sha256 differs from the one the bundle was exported from", err=True)
            report = check_parity(src, b.path, (b.manifest.get("parity") or {}).get("min_top1_agreement"),
                                  32, steps)
            result["parity"] = report.to_dict()
            if not report.passed:
                raise BundleError(f"{b.source}: parity failed: top-1 agreement {report.top1_agreement:.1%}")
        if on_device:
            from ..verify.reference import check_on_device

            with steps.step("Replaying the parity reference through this machine's engine"):
                result["on_device"] = check_on_device(b, engine, min_agreement).to_dict()
        if vendor:
            with steps.step("Running the vendor runtimes on the first parity prompt"):
                result["vendor"] = _check_vendor(b, engine, tok)
    finally:
        engine.close()


def _check_vendor(b, engine, tok) -> dict:
    """Each vendor runtime the engine names: greedy tokens on the first parity prompt vs ours."""
    from ..errors import BundleError
    from ..runtime.engine import greedy_tokens

    checks = engine.vendor_runtimes()
    if not checks:
        return {}
    try:
        from ..verify.reference import load_reference

        ref = load_reference(b)
        prompt = [int(t) for t in ref["prompt_ids"][:int(ref["prompt_lengths"][0])]]
    except Exception:  # no reference in the bundle: a short fixed prompt
        prompt = tok.encode("Hello, how are you?") or [0]
    ours = greedy_tokens(engine, prompt, 8)
    engine.reset()
    out: dict = {}
    for name, check in checks.items():
        try:
            out[name] = check(prompt, ours)
        except ImportError as exc:
            out[name] = {"passed": None, "reason": f"not installed ({exc.name or exc})"}
        except Exception as exc:
            out[name] = {"passed": False, "reason": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
    failed = [n for n, r in out.items() if r.get("passed") is False]
    if failed:
        raise BundleError(f"{b.source}: the vendor runtime {', '.join(failed)} disagrees with this engine: "
                          + "; ".join(f"{n}: {out[n]}" for n in failed)[:600])
    return out


def _report_verify(b, result, keys, rerun, as_json) -> None:
    from ..errors import BundleError
    from ..verify.reference import OnDeviceReport, describe

    dev = result.get("on_device")
    if as_json:
        emit_json(result)
    else:
        click.echo(f"{'ok' if not dev or dev['passed'] else 'FAILED'}: {b.source} — {result['files']} files match "
                   "the manifest" + (", signature valid" if keys else "") + ", engine runs"
                   + (f", parity {result['parity']['top1_agreement']:.1%}" if rerun else "")
                   + "".join(f", {n} {'same greedy tokens' if r.get('passed') else 'skipped: ' + str(r.get('reason'))}"
                             for n, r in (result.get("vendor") or {}).items()))
        if dev:
            click.echo(describe(OnDeviceReport(**dev)))
    if dev and not dev["passed"]:
        raise BundleError(f"{b.source}: on-device parity failed: top-1 agreement {dev['top1_agreement']:.1%} "
                          f"< {dev['min_top1_agreement']:.1%} ({dev['threshold_from']})")
