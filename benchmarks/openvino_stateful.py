"""OpenVINO: stateful KV cache vs KV cache through Python, and parity per precision, in one run.

    python benchmarks/openvino_stateful.py                      # SmolLM2-135M, ~10 min on 2 cores
    python benchmarks/openvino_stateful.py --precisions fp32 --rounds 2   # quicker

1. Exports the model to OpenVINO bundles at each precision (fp32/int8/int4) with the normal
   parity check, recording greedy top-1 agreement, KL and size.
2. Exports the fp32 model once more with ``stateful=False`` (past_*/present_* as graph IO).
3. Times decode on the same prompt, interleaved A B C D per round so machine load hits all
   variants alike:
     A  stateful fp32, f32 inference            (the engine's default)
     B  KV through Python: non-stateful fp32 IR, same compile config, cache in/out each step
     C  stateful fp32, device-default precision (bf16 + u8 KV cache on AVX512-BF16 CPUs)
     D  stateful int8, f32 inference
4. Measures parity of the device-default (bf16) precision on the fp32 and int8 bundles too.

Writes benchmarks/results/openvino_stateful.json and prints a markdown summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path


RESULTS = Path(__file__).resolve().parent / "results" / "openvino_stateful.json"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def export_all(source, out: Path, precisions, ctx: int, reuse: bool = False) -> dict:
    from edgeslm.bundle import Bundle
    from edgeslm.exporting import export_model

    bundles, parity = {}, {}
    for prec in precisions:
        b = _export_one(source, out / f"ov-{prec}", prec, ctx, reuse)
        p = b.manifest["parity"]
        bundles[prec] = b
        parity[prec] = {
            "top1_agreement": p["top1_agreement"], "passed": p["passed"], "tokens": p["tokens"], "kl_mean": p["kl_mean"],
            "kl_max": p["kl_max"], "max_abs_logit_diff": p["max_abs_logit_diff"],
            "perplexity_source": p["perplexity_source"], "perplexity_export": p["perplexity_export"],
            "bundle_mb": round(b.bytes / 1e6, 1),
            "ir_weights_mb": round(b.manifest["files"]["openvino_model.bin"]["bytes"] / 1e6, 1),
            "compression": b.manifest.get("compression"), "export_s": b.manifest["export"]["seconds"]}
        print(f"  {prec}: top-1 {p['top1_agreement']:.1%}, KL {p['kl_mean']:.2e}, {parity[prec]['bundle_mb']} MB",
              flush=True)
    t0 = time.perf_counter()
    if reuse and (out / "ov-fp32-python-kv" / "manifest.json").is_file():
        bundles["fp32-python-kv"] = Bundle.open(out / "ov-fp32-python-kv")
        return {"bundles": bundles, "parity": parity}
    bundles["fp32-python-kv"] = export_model(source, out / "ov-fp32-python-kv", format="openvino", precision="fp32",
                                             context_length=ctx, parity=False, overwrite=True,
                                             options={"stateful": False})
    print(f"  fp32 non-stateful IR: {time.perf_counter() - t0:.0f} s", flush=True)
    return {"bundles": bundles, "parity": parity}


def _export_one(source, path: Path, prec: str, ctx: int, reuse: bool):
    from edgeslm.bundle import Bundle
    from edgeslm.errors import ParityError
    from edgeslm.exporting import export_model

    kept = path / "manifest.json"
    if reuse and kept.is_file() and "parity" in json.loads(kept.read_text()):
        return Bundle.open(path)
    try:
        return export_model(source, path, format="openvino", precision=prec, context_length=ctx, overwrite=True)
    except ParityError as exc:  # below the bar: record it anyway (the bundle is kept)
        print(f"  {prec}: {exc}", flush=True)
        return Bundle.open(path)


def decode_run(engine, prompt, new_tokens: int) -> dict:
    engine.reset()
    t0 = time.perf_counter()
    logits = engine.prefill(prompt)
    t1 = time.perf_counter()
    for _ in range(new_tokens):
        logits = engine.decode(int(logits.argmax()))
    t2 = time.perf_counter()
    return {"prefill_tok_s": len(prompt) / (t1 - t0), "decode_tok_s": new_tokens / (t2 - t1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--precisions", default="fp32,int8,int4")
    ap.add_argument("--out-dir", type=Path, default=Path("/tmp/edgeslm-bench-openvino"),
                    help="where the bundles go (kept for inspection)")
    ap.add_argument("--context-length", type=int, default=512)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--reuse", action="store_true", help="reuse bundles (and their parity) left in --out-dir")
    args = ap.parse_args(argv)

    import openvino as ov

    import edgeslm
    from edgeslm.plugins import get_engine
    from edgeslm.sources import load_source
    from edgeslm.verify.parity import reference_run, run_parity

    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if "fp32" not in precisions:
        precisions.insert(0, "fp32")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    print(f"Loading {args.model}", flush=True)
    source = load_source(args.model)
    print("Exporting (with parity)", flush=True)
    ex = export_all(source, args.out_dir, precisions, args.context_length, args.reuse)
    bundles = ex["bundles"]

    print("Parity at the device-default precision (bf16 on this CPU)", flush=True)
    refs = reference_run(source, new_tokens=32)
    Engine = get_engine("openvino")
    default_precision = {}
    for prec in [p for p in ("fp32", "int8") if p in bundles]:
        eng = Engine(bundles[prec], inference_precision="default", threads=args.threads)
        rep = run_parity(eng, refs)
        default_precision[prec] = {"top1_agreement": rep.top1_agreement, "kl_mean": rep.kl_mean,
                                   "compiled_precision": str(eng.compiled.get_property("INFERENCE_PRECISION_HINT")),
                                   "kv_cache_precision": str(eng.compiled.get_property("KV_CACHE_PRECISION"))}
        eng.close()
        print(f"  {prec} @ device default: top-1 {rep.top1_agreement:.1%}, KL {rep.kl_mean:.2e}", flush=True)

    variants = {
        "A_stateful_fp32_f32": (bundles["fp32"], {}),
        "B_python_kv_fp32_f32": (bundles["fp32-python-kv"], {}),
        "C_stateful_fp32_device_default": (bundles["fp32"], {"inference_precision": "default"}),
    }
    if "int8" in bundles:
        variants["D_stateful_int8_f32"] = (bundles["int8"], {})
    engines = {k: Engine(b, threads=args.threads, **opts) for k, (b, opts) in variants.items()}
    tok = bundles["fp32"].load_tokenizer()
    prompt = []
    while len(prompt) < args.prompt_tokens:
        prompt += tok.encode("The Raspberry Pi is a series of small single-board computers used for edge AI. ")
    prompt = prompt[:args.prompt_tokens]
    for eng in engines.values():  # warm-up: first inference compiles shape-specific kernels
        decode_run(eng, prompt, 4)
    print(f"Timing: {args.rounds} rounds x {len(engines)} variants, {len(prompt)}-token prompt, "
          f"{args.new_tokens} decode steps, {args.threads} threads", flush=True)
    runs = {k: [] for k in engines}
    for r in range(args.rounds):
        for k, eng in engines.items():
            runs[k].append(decode_run(eng, prompt, args.new_tokens))
        print("  round", r + 1, " ".join(f"{k.split('_')[0]}={runs[k][-1]['decode_tok_s']:.1f}" for k in runs), flush=True)
    speed = {}
    for k, rs in runs.items():
        speed[k] = {"decode_tok_s_median": round(statistics.median(x["decode_tok_s"] for x in rs), 1),
                    "prefill_tok_s_median": round(statistics.median(x["prefill_tok_s"] for x in rs), 1),
                    "decode_tok_s_rounds": [round(x["decode_tok_s"], 1) for x in rs],
                    "compiled_precision": str(engines[k].compiled.get_property("INFERENCE_PRECISION_HINT"))}
    for eng in engines.values():
        eng.close()
    a, b = speed["A_stateful_fp32_f32"]["decode_tok_s_median"], speed["B_python_kv_fp32_f32"]["decode_tok_s_median"]
    result = {
        "benchmark": "openvino_stateful", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": sys.version.split()[0],
                    "openvino": ov.get_version(), "edgeslm": edgeslm.__version__},
        "model": args.model, "context_length": args.context_length,
        "timing": {"prompt_tokens": len(prompt), "new_tokens": args.new_tokens, "rounds": args.rounds,
                   "threads": args.threads, "order": "interleaved A B C D per round; medians"},
        "parity": ex["parity"], "parity_device_default_precision": default_precision,
        "decode": speed, "stateful_speedup": round(a / b, 2) if b else None,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    print(summary(result))
    print(f"wrote {args.results}")
    return 0


def summary(r: dict) -> str:
    lines = ["| precision | top-1 agreement | KL mean | perplexity (source -> export) | IR weights MB |",
             "|---|---|---|---|---|"]
    for prec, p in r["parity"].items():
        lines.append(f"| {prec} | {p['top1_agreement']:.1%} ({p['tokens']} tokens) | {p['kl_mean']:.2e} | "
                     f"{p['perplexity_source']:.2f} -> {p['perplexity_export']:.2f} | {p['ir_weights_mb']} |")
    lines += ["", "| variant | decode tok/s (median) | prefill tok/s | rounds |", "|---|---|---|---|"]
    for k, s in r["decode"].items():
        lines.append(f"| {k} | {s['decode_tok_s_median']} | {s['prefill_tok_s_median']} | {s['decode_tok_s_rounds']} |")
    lines.append(f"\nstateful / KV-through-Python decode: {r['stateful_speedup']}x")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
