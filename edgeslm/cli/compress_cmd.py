"""edgeslm compress | distill | finetune | eval

Each verb loads a model, applies one technique (compress may chain several), writes the result
as a Hugging Face folder that ``edgeslm export`` reads, and optionally exports it and/or
writes a report (markdown + JSON) comparing source and result.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from . import cli
from ._common import OutputDir, emit_json, json_option
from ._output import current


def _report_option(f):
    return click.option("--report", is_flag=True,
                        help="Measure source vs result (params, bytes, decode tok/s, top-1, KL, perplexity); "
                             "write OUT/report.md and OUT/report.json.")(f)


def _export_options(f):
    f = click.option("--bundle", "bundle_dir", type=OutputDir("bundle folder"), default=None,
                     help="Bundle directory for --export [default: OUT-FORMAT-PRECISION].")(f)
    f = click.option("--precision", default="fp32", show_default=True,
                     help="Export precision, one the exporter writes (onnx: fp32, int8, int4, int4-gguf, int4-minmax ...).")(f)
    f = click.option("--export", "export_format", default=None, metavar="FORMAT",
                     help="Also export the result to this bundle format (onnx, openvino ...).")(f)
    return f


def _finish(source, result, out_dir: Path, export_format, precision, bundle_dir, report, as_json, steps,
            curve=None, appendix: str = ""):
    """Save the result, export it if asked, write the report (``appendix``: markdown after its
    table); print a summary (``curve``: a training curve to include in it)."""
    from ..compress.model import count_parameters, save_hf_folder

    with steps.step(f"Saving {out_dir}"):
        save_hf_folder(result, out_dir)
    summary = {"output": str(out_dir), "parameters": [count_parameters(source.module), count_parameters(result.module)],
               "compression": result.spec.extra.get("compression", [])}
    if curve is not None:
        summary["curve"] = curve
    bundle = None
    if export_format:
        from ..exporting import export_model

        bundle = bundle_dir or out_dir.with_name(f"{out_dir.name}-{export_format}-{precision}")
        export_model(result, bundle, format=export_format, precision=precision, overwrite=True, steps=steps)
        summary["bundle"] = str(bundle)
    if report:
        from ..compress.evaluate import Evaluator
        from ..compress.report import measure, to_markdown, write_report

        with steps.step("Measuring source and result"):
            ev = Evaluator(source)
            rows = [measure(f"source ({source.name})", source, ev), measure("result", result, ev)]
            if bundle is not None:
                rows.append(measure(f"result, {export_format} {precision} bundle", str(bundle), ev))
        write_report(rows, out_dir / "report.md", out_dir / "report.json",
                     preamble="Measured by `edgeslm compress --report` against the source model.\n\n",
                     appendix=appendix)
        summary["report"] = rows
        if not as_json:
            click.echo(to_markdown(rows, notes=False) + appendix)
    if as_json:
        emit_json(summary)
    else:
        p0, p1 = summary["parameters"]
        click.echo(f"wrote {out_dir}: {p0:,} -> {p1:,} parameters ({p1 / p0:.1%})"
                   + (f"; bundle {summary['bundle']}" if bundle else ""))


def _load(model, steps):
    from ..compress.model import load_model

    with steps.step(f"Loading {model}"):
        return load_model(model)


@cli.command("compress")
@click.argument("model")
@click.option("-o", "--output", "out_dir", required=True, type=OutputDir(),
              help="Folder for the compressed model (a Hugging Face folder `edgeslm export` reads).")
@click.option("--prune-heads", type=float, default=0.0, show_default=True,
              help="Structured: fraction of attention heads removed per layer.")
@click.option("--prune-mlp", type=float, default=0.0, show_default=True,
              help="Structured: fraction of MLP channels removed per layer.")
@click.option("--heads-mode", type=click.Choice(["query", "kv_group"]), default="query", show_default=True,
              help="query: remove query heads inside each KV group; kv_group: remove whole KV groups.")
@click.option("--calibration", type=click.Path(exists=True, path_type=Path), default=None,
              help="Text file scoring heads/channels by activation [default: built-in text].")
@click.option("--calibration-tokens", type=click.IntRange(min=1), default=256, show_default=True,
              help="Tokens of calibration text every calibrated step reads (sparsegpt wants 2048+ of real "
              "text: --calibration; the built-in text is ~100 tokens, repeated).")
@click.option("--low-rank-energy", type=float, default=None, help="Low-rank: keep this fraction of sigma^2 per layer.")
@click.option("--low-rank-size", type=float, default=None, help="Low-rank: keep this fraction of each layer's weights.")
@click.option("--low-rank-targets", default="mlp", show_default=True,
              help="Comma list: mlp, attention, or layer names (down_proj ...).")
@click.option("--low-rank-whiten", is_flag=True,
              help="Low-rank: activation-aware SVD (whitened by the calibration text's inputs).")
@click.option("--low-rank-global", is_flag=True,
              help="Low-rank: --low-rank-size is the budget over all targeted layers, ranks by sensitivity.")
@click.option("--sparsity", type=float, default=0.0, show_default=True,
              help="Unstructured pruning: fraction of linear weights zeroed (shapes unchanged).")
@click.option("--sparsity-method", type=click.Choice(["magnitude", "wanda", "sparsegpt"]), default="magnitude",
              show_default=True, help="wanda: |W| x input norm on the calibration text; sparsegpt: also "
              "updates the kept weights (second order). Both keep far more quality than magnitude.")
@click.option("--sparsity-pattern", default="unstructured", show_default=True,
              help="unstructured, or N:M such as 2:4 (wanda; implies 50% for 2:4).")
@click.option("--sparsity-layerwise", type=click.Choice(["uniform", "owl"]), default="uniform", show_default=True,
              help="owl: per-layer sparsity from each layer's share of outlier weights (wanda/sparsegpt, "
              "unstructured), within --sparsity +- --owl-lambda, overall --sparsity.")
@click.option("--owl-lambda", type=float, default=0.08, show_default=True,
              help="OWL: how far a layer's sparsity may move from --sparsity.")
@click.option("--int4", "int4_method", type=click.Choice(["gptq", "rtn"]), default=None,
              help="Put the decoder weights on the int4 grid (GPTQ: calibrated); export with -p int4 keeps them.")
@click.option("--int4-grid", type=click.Choice(["onnx", "minmax"]), default="onnx", show_default=True,
              help="onnx: MatMulNBits' grid (export -p int4); minmax: Q4_1's float-minimum blocks "
              "(export -p int4-minmax; what a Q4_1 GGUF's weights already lie on).")
@click.option("--int4-act-order", is_flag=True, help="GPTQ: quantize columns by decreasing input energy.")
@_export_options
@_report_option
@json_option
def compress_command(model, out_dir, prune_heads, prune_mlp, heads_mode, calibration, calibration_tokens,
                     low_rank_energy, low_rank_size, low_rank_targets, low_rank_whiten, low_rank_global, sparsity,
                     sparsity_method, sparsity_pattern, sparsity_layerwise, owl_lambda, int4_method, int4_grid,
                     int4_act_order, export_format, precision, bundle_dir, report, as_json):
    """Compress MODEL: structured pruning, low-rank factorization, sparsity, int4 weights (in
    that order, any combination), then optionally export with a quantization precision.

    \b
    Examples:
      edgeslm compress smollm2-135m --prune-heads 0.3 --prune-mlp 0.3 -o out/pruned --report
      edgeslm compress smollm2-135m --low-rank-energy 0.5 -o out/lowrank --export onnx
      edgeslm compress out/pruned --sparsity 0.5 -o out/sparse --report
      edgeslm compress smollm2-135m --sparsity-method wanda --sparsity-pattern 2:4 -o out/24
      edgeslm compress smollm2-135m --sparsity 0.5 --sparsity-method sparsegpt --sparsity-layerwise owl \\
          --calibration notes.txt --calibration-tokens 2048 -o out/sparse
      edgeslm compress smollm2-135m --low-rank-size 0.74 --low-rank-targets mlp,attention \\
          --low-rank-whiten --low-rank-global -o out/lr
      edgeslm compress MODEL --int4 gptq -o out/gptq --export onnx --precision int4
      edgeslm compress MODEL --int4 gptq --int4-grid minmax -o out/q --export onnx --precision int4-minmax
    """
    steps = current().steps()
    source = _load(model, steps)
    text = _calibration_text(calibration)
    result = _prune(source, prune_heads, prune_mlp, heads_mode, text, calibration_tokens, steps)
    result = _low_rank(result, low_rank_energy, low_rank_size, low_rank_targets, low_rank_whiten, low_rank_global,
                       text, calibration_tokens, steps)
    result = _sparsify(result, text, steps, sparsity, sparsity_method, sparsity_pattern, sparsity_layerwise,
                       owl_lambda, calibration_tokens)
    result = _int4(result, int4_method, int4_grid, int4_act_order, text, calibration_tokens, steps)
    if result is source and not export_format:
        raise click.UsageError("nothing to do: give a technique (--prune-heads/--prune-mlp, --low-rank-energy, "
                               "--sparsity, --int4) or --export with a --precision")
    _finish(source, result, out_dir, export_format, precision, bundle_dir, report, as_json, steps)


def _calibration_text(path):
    """The --calibration file's text, or None (each technique then uses its built-in text)."""
    if not path:
        return None
    from ..compress.data import read_text

    return read_text(path)


@contextlib.contextmanager
def _bad_values_are_usage_errors():
    """A technique's ValueError (a ratio out of range, nothing to factorize...) is the user's
    input: report it as a usage error, not a crash."""
    try:
        yield
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


def _prune(result, prune_heads, prune_mlp, heads_mode, text, calibration_tokens, steps):
    """Structured pruning of heads and/or MLP channels, if asked."""
    if not (prune_heads or prune_mlp):
        return result
    from ..compress.prune import StructuredPruneConfig, structured_prune

    cfg = StructuredPruneConfig(head_ratio=prune_heads, mlp_ratio=prune_mlp, heads_mode=heads_mode,
                                calibration_tokens=calibration_tokens)
    with steps.step("Structured pruning"), _bad_values_are_usage_errors():
        return structured_prune(result, cfg, text)


def _low_rank(result, energy, size, targets, whiten, global_, text, calibration_tokens, steps):
    """Low-rank factorization, if an energy or a size is given."""
    if energy is None and size is None:
        return result
    from ..compress.lowrank import LowRankConfig, low_rank_factorize

    cfg = LowRankConfig(energy=energy, size_ratio=size,
                        targets=tuple(t.strip() for t in targets.split(",") if t.strip()),
                        whiten=whiten, allocation="global" if global_ else "uniform",
                        calibration_tokens=calibration_tokens)
    with steps.step("Low-rank factorization"), _bad_values_are_usage_errors():
        return low_rank_factorize(result, cfg, text)


def _sparsify(result, text, steps, sparsity, method, pattern, layerwise, owl_lambda, calibration_tokens):
    """The --sparsity step, if asked: magnitude, or Wanda / SparseGPT (uniform or OWL per-layer ratios)."""
    if not (sparsity or pattern != "unstructured" or layerwise != "uniform"):
        return result
    if method == "magnitude":
        if pattern != "unstructured" or layerwise != "uniform":
            raise click.UsageError("--sparsity-pattern N:M and --sparsity-layerwise owl need --sparsity-method "
                                   "wanda or sparsegpt")
        from ..compress.prune import MagnitudePruneConfig, magnitude_prune

        with steps.step(f"Magnitude pruning to {sparsity:.0%} sparsity"):
            return magnitude_prune(result, MagnitudePruneConfig(sparsity=sparsity))
    from ..compress.sparsity import SparsityConfig, activation_sparsify

    sparsity = sparsity or 0.5  # N:M, or OWL alone: 50%
    what = pattern if pattern != "unstructured" else f"{sparsity:.0%}" + (", OWL per-layer" if layerwise == "owl" else "")
    cfg = SparsityConfig(sparsity, pattern=pattern, method=method, layerwise=layerwise, owl_lambda=owl_lambda)
    with steps.step(f"{method} sparsity ({what})"), _bad_values_are_usage_errors():
        return activation_sparsify(result, cfg, text, calibration_tokens)


def _int4(result, method, grid, act_order, text, calibration_tokens, steps):
    """Decoder weights put on an int4 grid (GPTQ or round-to-nearest), if asked."""
    if not method:
        return result
    from ..compress.gptq import QuantizeConfig, quantize_weights

    with steps.step(f"int4 weights ({method})"):
        return quantize_weights(result, QuantizeConfig(method=method, grid=grid, act_order=act_order,
                                                       calibration_tokens=calibration_tokens), text)


@cli.command("distill")
@click.argument("teacher")
@click.option("-o", "--output", "out_dir", required=True, type=OutputDir(),
              help="Folder for the student (checkpoints go to OUT/checkpoints).")
@click.option("--layers", type=int, default=4, show_default=True, help="Student layers (taken evenly from the teacher).")
@click.option("--intermediate", type=int, default=None, help="Student MLP size [default: the teacher's].")
@click.option("--hidden", type=int, default=None, help="Student hidden size [default: the teacher's].")
@click.option("--heads", type=int, default=None, help="Student attention heads [default: the teacher's].")
@click.option("--text", "text_file", type=click.Path(exists=True, path_type=Path), default=None,
              help="Training text [default: text the teacher generates from built-in seed prompts].")
@click.option("--generate-tokens", type=int, default=128, show_default=True, help="Tokens per generated sample.")
@click.option("--samples", type=int, default=8, show_default=True,
              help="Generated samples per seed prompt (8 x 8 prompts x 128 tokens: ~8k tokens of text).")
@click.option("--steps", "n_steps", type=int, default=200, show_default=True)
@click.option("--seq-len", type=int, default=64, show_default=True)
@click.option("--batch-size", type=int, default=4, show_default=True)
@click.option("--lr", type=float, default=5e-4, show_default=True)
@click.option("--temperature", type=float, default=1.0, show_default=True, help="KD temperature.")
@click.option("--hard-weight", type=float, default=0.0, show_default=True,
              help="Weight of cross-entropy on the text's own next tokens (0 = pure KD).")
@click.option("--hidden-weight", type=float, default=0.0, show_default=True,
              help="Weight of matching each student layer's output to the teacher layer it was taken from "
                   "(needs the teacher's hidden size; 0 = logits only).")
@click.option("--checkpoint-every", type=int, default=50, show_default=True)
@click.option("--curve-every", type=click.IntRange(min=0), default=50, show_default=True,
              help="Score the student against the teacher (top-1, KL, perplexity) at step 0, every N steps and "
                   "at the end, against the training CPU-minutes: OUT/curve.json, and in the report "
                   "(0 = first and last step only).")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in OUT/checkpoints.")
@_export_options
@_report_option
@json_option
def distill_command(teacher, out_dir, layers, intermediate, hidden, heads, text_file, generate_tokens, samples,
                    n_steps, seq_len, batch_size, lr, temperature, hard_weight, hidden_weight, checkpoint_every,
                    curve_every, resume, export_format, precision, bundle_dir, report, as_json):
    """Distill TEACHER into a smaller student trained on the teacher's logits (KL).

    The defaults are sized for a 2-core CPU: for SmolLM2-135M -> the 4-layer, MLP-1024 student
    below (38.9M parameters, 1 torch thread), the teacher's text took 3.2 CPU-minutes and 200
    steps of 4 x 64 tokens 7.6 more; top-1 against the teacher rose 0% -> 25%, KL 14.3 -> 3.8
    (2026-12-01; with --samples 2 the same steps reached 14.6%, KL 4.4). The curve
    (OUT/curve.json) shows top-1 / KL against the teacher vs those CPU-minutes; Ctrl-C and
    --resume continue a run from its last checkpoint, curve included. For a better student,
    give --text with tens of thousands of tokens of your domain and more --steps.

    \b
    Example (SmolLM2-135M -> ~39M student, CPU-sized):
      edgeslm distill smollm2-135m --layers 4 --intermediate 1024 -o out/student --report
      edgeslm distill smollm2-135m --layers 4 --intermediate 1024 -o out/student --steps 400 --resume
    """
    import time

    from ..compress.curve import Curve
    from ..compress.data import SEED_PROMPTS, read_text
    from ..compress.distill import DistillConfig, StudentConfig, distill, make_student, teacher_text
    from ..compress.evaluate import Evaluator

    if hidden_weight and hidden:
        raise click.UsageError("--hidden-weight matches hidden states, so the student needs the teacher's hidden "
                               "size: drop --hidden or --hidden-weight")
    steps = current().steps()
    source = _load(teacher, steps)
    with steps.step("Building the student from the teacher's weights"):
        student = make_student(source, StudentConfig(layers, intermediate, hidden, heads))
    c0 = time.process_time()
    if text_file:
        data = [source.tokenizer.encode(read_text(text_file))]
    else:
        with steps.step(f"Teacher writes {samples * len(SEED_PROMPTS)} samples of {generate_tokens} tokens"):
            data = teacher_text(source, SEED_PROMPTS, new_tokens=generate_tokens, samples=samples)
    text_cpu = time.process_time() - c0
    cfg = DistillConfig(steps=n_steps, seq_len=seq_len, batch_size=batch_size, lr=lr, temperature=temperature,
                        hard_weight=hard_weight, hidden_weight=hidden_weight, checkpoint_every=checkpoint_every)
    with steps.step("Scoring the teacher's reference continuations for the curve"):
        curve = Curve(Evaluator(source), curve_every, out_dir / "curve.json")
    result = distill(source, student, data, cfg, out_dir=out_dir, resume=resume, progress=not current().quiet,
                     curve=curve)
    last = curve.points[-1]
    current().note(f"curve: {len(curve.points)} points in {out_dir / 'curve.json'}; at step {last['step']}: top-1 "
                   f"{last['top1_agreement']:.1%}, KL {last['kl_mean']:.3f} after {last['cpu_minutes']:.2f} "
                   f"CPU-min of training (the text: {text_cpu / 60:.2f})")
    appendix = (f"\n## Agreement vs CPU-minutes of training\n\nTraining text: {text_cpu / 60:.2f} CPU-min to "
                f"{'read' if text_file else 'generate'}; evaluation excluded.\n\n{curve.to_markdown()}")
    _finish(source, result, out_dir, export_format, precision, bundle_dir, report, as_json, steps,
            curve={"text_cpu_minutes": round(text_cpu / 60, 3), "points": curve.points}, appendix=appendix)


@cli.command("finetune")
@click.argument("model")
@click.option("--data", "data_file", required=True, type=click.Path(exists=True, path_type=Path),
              help='JSONL of chat examples: {"messages": [{"role": ..., "content": ...}, ...]} per line.')
@click.option("-o", "--output", "out_dir", required=True, type=OutputDir(),
              help="Folder for the merged model.")
@click.option("--rank", type=int, default=8, show_default=True)
@click.option("--alpha", type=int, default=16, show_default=True)
@click.option("--steps", "n_steps", type=int, default=60, show_default=True)
@click.option("--batch-size", type=int, default=4, show_default=True)
@click.option("--lr", type=float, default=2e-4, show_default=True)
@click.option("--max-len", type=int, default=256, show_default=True, help="Tokens per example.")
@_export_options
@_report_option
@json_option
def finetune_command(model, data_file, out_dir, rank, alpha, n_steps, batch_size, lr, max_len,
                     export_format, precision, bundle_dir, report, as_json):
    """Fine-tune MODEL with LoRA (peft) on chat examples and merge the adapters into the weights.

    \b
    Example:
      edgeslm finetune smollm2-135m --data chats.jsonl -o out/tuned --export onnx
    """
    from ..compress.data import read_chat_jsonl
    from ..compress.lora import LoraConfig, lora_finetune

    steps = current().steps()
    source = _load(model, steps)
    examples = read_chat_jsonl(data_file)
    cfg = LoraConfig(rank=rank, alpha=alpha, steps=n_steps, batch_size=batch_size, lr=lr, max_len=max_len)
    result = lora_finetune(source, examples, cfg, progress=not current().quiet)
    _finish(source, result, out_dir, export_format, precision, bundle_dir, report, as_json, steps)


@cli.command("eval")
@click.argument("model")
@click.option("--reference", "-r", required=True, help="Reference model (name, .gguf or HF folder).")
@click.option("--text", "text_file", type=click.Path(exists=True, path_type=Path), default=None,
              help="Text file for perplexity [default: the parity check's paragraph].")
@click.option("--max-text-tokens", type=int, default=512, show_default=True)
@click.option("--prompt", "prompts", multiple=True, help="Prompt for top-1/KL (repeatable) [default: the parity prompts].")
@click.option("--new-tokens", type=int, default=32, show_default=True, help="Greedy reference tokens per prompt.")
@click.option("--speed", "speed_tokens", type=int, default=0, show_default=True,
              help="Also measure decode tok/s over this many tokens.")
@json_option
def eval_command(model, reference, text_file, max_text_tokens, prompts, new_tokens, speed_tokens, as_json):
    """Evaluate MODEL (a bundle, HF folder, GGUF or name) against a reference model:
    greedy top-1 agreement and KL on fixed prompts, perplexity on a text file.

    \b
    Example:
      edgeslm eval out/pruned-onnx-fp32 --reference smollm2-135m --text notes.txt
    """
    from ..compress.data import read_text
    from ..compress.evaluate import evaluate
    from ..verify.parity import DEFAULT_PROMPTS

    with current().steps().step(f"Evaluating {model} against {reference}"):
        res = evaluate(model, reference, prompts=prompts or DEFAULT_PROMPTS, new_tokens=new_tokens,
                       text=read_text(text_file) if text_file else None, max_text_tokens=max_text_tokens,
                       speed_tokens=speed_tokens)
    if as_json:
        res.pop("per_prompt", None)
        emit_json(res)
        return
    click.echo(f"runs on            {res['runner']}")
    click.echo(f"top-1 agreement    {res['top1_agreement']:.1%} over {res['tokens']} tokens")
    click.echo(f"KL (mean / max)    {res['kl_mean']:.4f} / {res['kl_max']:.4f} nats")
    click.echo(f"perplexity         {res['perplexity_export']:.2f} (reference {res['perplexity_source']:.2f})")
    if speed_tokens:
        click.echo(f"decode             {res['decode_tokens_per_s']:.1f} tok/s")
