"""Our engines against each format's own LLM runtime, on the SAME bundle (SmolLM2-135M-Instruct).

    python benchmarks/vendor_runtimes.py                       # every pair, threads 1 and 2, 3 rounds
    python benchmarks/vendor_runtimes.py --only openvino:int8 --threads 2 --rounds 2

Pairs (the vendor runtime opens the interop files our exporter wrote next to ours):
    onnx:int4-gguf     edgeslm OnnxEngine        vs onnxruntime-genai (model_genai.onnx, same weights;
                       the default graph-writer export: GroupQueryAttention, shared KV buffer)
    openvino:int8      edgeslm OpenVINOEngine    vs openvino_genai.LLMPipeline (same IR)
    litert:dynamic-int8 edgeslm LiteRTEngine     vs LiteRT-LM (model.litertlm, the same .tflite inside)

Every run: the same prompt (--prompt-tokens ids of the chat-free bench text; LiteRT-LM takes the
text, which tokenizes to the same ids), --new-tokens greedy tokens, rounds interleaved
(ours, theirs, ours, theirs ...) so machine drift hits both; medians reported. Prefill tok/s =
prompt tokens / time to first logits; decode tok/s = tokens after the first / their time.
Process CPU time per token (every thread of the runtime) is reported beside the rates.
LiteRT-LM's run_prefill stops before the last prompt token (its decode step, which yields the
first logits, runs in run_decode): its prefill rate and CPU are taken over its TTFT and with one
decode step's CPU added, like ours (its own prefill-only rate: prefill_only_tps in the JSON).
OpenVINO is measured at our engine's exact-f32 setting and at each side's CPU default (bf16
inference, u8 KV cache on AVX512-BF16 CPUs). Bundles are exported once into --cache without the
parity check (the interop tests check parity); results -> benchmarks/results/vendor_runtimes.{json,md}.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_args import only_set, parser, thread_counts  # noqa: E402
PAIRS = {"onnx:int4-gguf": "onnxruntime-genai", "openvino:int8": "openvino-genai",
         "litert:dynamic-int8": "litert-lm"}


# -- our side -------------------------------------------------------------------------------
def run_ours(bundle_dir: Path, ids: list[int], n: int, threads: int, options: dict) -> dict:
    import edgeslm

    with edgeslm.load(bundle_dir, engine_options={"threads": threads, **options}) as m:
        eng = m.engine
        eng.reset()
        eng.prefill(ids[:8])  # warm-up (first-call allocations, compiled kernels)
        eng.reset()
        c0, t0 = time.process_time(), time.perf_counter()
        logits = eng.prefill(ids)
        c1, t1 = time.process_time(), time.perf_counter()
        for _ in range(n - 1):
            logits = eng.decode(int(np.argmax(logits)))
        c2, t2 = time.process_time(), time.perf_counter()
    return {"prefill_tps": len(ids) / (t1 - t0), "decode_tps": (n - 1) / (t2 - t1), "ttft_s": t1 - t0,
            "prefill_cpu_ms_tok": (c1 - c0) / len(ids) * 1e3, "decode_cpu_ms_tok": (c2 - c1) / (n - 1) * 1e3,
            "cpu_s": c2 - c0}


# -- their side -----------------------------------------------------------------------------
def run_ortgenai(bundle_dir: Path, ids: list[int], n: int, threads: int, options: dict) -> dict:
    import onnxruntime_genai as og

    from ortgenai_engine import genai_model

    model = genai_model(bundle_dir, threads)

    def once(prompt, new):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt) + new, min_length=len(prompt) + new, do_sample=False)
        gen = og.Generator(model, params)
        c0, t0 = time.process_time(), time.perf_counter()
        gen.append_tokens(np.array([prompt], dtype=np.int32))  # prefill
        gen.generate_next_token()
        c1, t1 = time.process_time(), time.perf_counter()
        for _ in range(new - 1):
            gen.generate_next_token()
        c2, t2 = time.process_time(), time.perf_counter()
        return (c0, c1, c2), (t0, t1, t2)

    once(ids[:8], 2)  # warm-up
    (c0, c1, c2), (t0, t1, t2) = once(ids, n)
    return {"prefill_tps": len(ids) / (t1 - t0), "decode_tps": (n - 1) / (t2 - t1), "ttft_s": t1 - t0,
            "prefill_cpu_ms_tok": (c1 - c0) / len(ids) * 1e3, "decode_cpu_ms_tok": (c2 - c1) / (n - 1) * 1e3,
            "cpu_s": c2 - c0}


def run_ovgenai(bundle_dir: Path, ids: list[int], n: int, threads: int, options: dict) -> dict:
    import openvino as ov
    import openvino_genai as og

    props = {"INFERENCE_NUM_THREADS": threads, **options}
    pipe = og.LLMPipeline(str(bundle_dir), "CPU", **props)
    cfg = og.GenerationConfig()
    cfg.max_new_tokens, cfg.do_sample, cfg.ignore_eos = n, False, True
    pipe.generate(ov.Tensor(np.array([ids[:8]], dtype=np.int64)), cfg)  # warm-up
    c0 = time.process_time()
    res = pipe.generate(ov.Tensor(np.array([ids], dtype=np.int64)), cfg)
    c2 = time.process_time()
    pm = res.perf_metrics
    ttft = pm.get_ttft().mean / 1000.0
    tpot = pm.get_tpot().mean / 1000.0
    return {"prefill_tps": len(ids) / ttft, "decode_tps": 1.0 / tpot, "ttft_s": ttft,
            "cpu_s": c2 - c0}  # the whole generate call: prefill + decode, all threads


def run_litertlm(bundle_dir: Path, text: str, n: int, threads: int, cache_dir: str) -> dict:
    import litert_lm
    from litert_lm import interfaces

    engine = litert_lm.Engine(str(bundle_dir / "model.litertlm"), backend=interfaces.Backend.CPU(thread_count=threads),
                              cache_dir=cache_dir, enable_benchmark=True)
    try:
        def once(prompt):
            s = engine.create_session(apply_prompt_template=False, max_output_tokens=n,
                                      sampler_config=interfaces.SamplerConfig(top_k=1))
            c0 = time.process_time()
            s.run_prefill([prompt])
            c1 = time.process_time()
            s.run_decode()
            c2 = time.process_time()
            info = s.get_benchmark_info()
            s.close()
            return info, c1 - c0, c2 - c1

        once("hello")  # warm-up
        info, pcpu, dcpu = once(text)
    finally:
        engine.close()
    # run_prefill leaves the last prompt token pending: its decode step (which gives the first
    # logits) runs inside run_decode. Our prefill rate is prompt tokens / time to first logits, so
    # LiteRT-LM's is taken over its TTFT too, and one decode step's CPU (the mean) moves from
    # decode to prefill; LiteRT-LM's own prefill-only rate is kept as prefill_only_tps.
    n_pre, n_dec = max(1, info.last_prefill_token_count), max(1, info.last_decode_token_count)
    step_cpu = dcpu / n_dec
    return {"prefill_tps": n_pre / info.time_to_first_token_in_second, "decode_tps": info.last_decode_tokens_per_second,
            "ttft_s": info.time_to_first_token_in_second, "decode_tokens": n_dec, "prefill_tokens": n_pre,
            "prefill_only_tps": info.last_prefill_tokens_per_second,
            "prefill_cpu_ms_tok": (pcpu + step_cpu) / n_pre * 1e3,
            "decode_cpu_ms_tok": step_cpu * 1e3, "cpu_s": pcpu + dcpu}


# -- driver ---------------------------------------------------------------------------------
def export(source, fmt: str, prec: str, cache: Path) -> Path:
    from edgeslm.exporting import export_model

    out = cache / f"{fmt}-{prec}"
    if (out / "manifest.json").exists():
        m = json.loads((out / "manifest.json").read_text())
        if all(i.get("written", True) for i in (m.get("interop") or {"-": {"written": False}}).values()) \
                and m["model"]["source_sha256"] == source.sha256 \
                and (fmt != "onnx" or (m["artifacts"].get("graph") or {}).get("kind") == "writer"):
            return out
    print(f"== exporting {fmt}/{prec}", flush=True)
    # onnx: the default graph (the graph writer's, GroupQueryAttention with a shared KV buffer);
    # its model_genai.onnx computes the length inputs from onnxruntime-genai's attention_mask
    export_model(source, out, format=fmt, precision=prec, context_length=512, parity=False, overwrite=True)
    return out


def cases(pair: str, bundle: Path, ids, text, n, cache_dir):
    """(label, side, callable(threads)) for one pair."""
    fmt = pair.split(":")[0]
    if fmt == "onnx":
        return [("ours", "ours", lambda t: run_ours(bundle, ids, n, t, {})),
                ("onnxruntime-genai", "vendor", lambda t: run_ortgenai(bundle, ids, n, t, {}))]
    if fmt == "openvino":
        from edgeslm_openvino.genai import EXACT_PROPERTIES

        exact = {k: v for k, v in EXACT_PROPERTIES.items()}
        return [("ours f32", "ours", lambda t: run_ours(bundle, ids, n, t, {})),
                ("openvino-genai f32", "vendor", lambda t: run_ovgenai(bundle, ids, n, t, exact)),
                ("ours cpu-default", "ours", lambda t: run_ours(bundle, ids, n, t, {"inference_precision": "default"})),
                ("openvino-genai cpu-default", "vendor", lambda t: run_ovgenai(bundle, ids, n, t, {}))]
    if fmt == "litert":
        return [("ours", "ours", lambda t: run_ours(bundle, ids, n, t, {})),
                ("litert-lm", "vendor", lambda t: run_litertlm(bundle, text, n, t, cache_dir))]
    raise ValueError(pair)


def main(argv=None) -> int:
    ap = parser(__doc__, rounds=3, cache="out/bench-vendor", only_help="comma list of " + ", ".join(PAIRS))
    args = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from edgeslm.bench import machine_info
    from edgeslm.sources import load_source

    pairs = [p for p in PAIRS if not args.only or p in only_set(args)]
    source = load_source("smollm2-135m")
    bundles = {p: export(source, *p.split(":"), Path(args.cache)) for p in pairs}
    tok = source.tokenizer
    text = " ".join(["The quick brown fox jumps over the lazy dog near the river bank."] * 20)
    ids = tok.encode(text)
    while len(ids) > args.prompt_tokens:  # a text that tokenizes to about --prompt-tokens ids
        text = text.rsplit(" ", 1)[0]
        ids = tok.encode(text)
    del source
    threads = thread_counts(args)
    cache_dir = tempfile.mkdtemp(prefix="edgeslm-litertlm-cache-")
    raw: dict[str, dict[str, list[dict]]] = {}
    for pair in pairs:
        for t in threads:
            todo = cases(pair, bundles[pair], ids, text, args.new_tokens, cache_dir)
            for r in range(args.rounds):
                for label, _side, fn in todo:
                    try:
                        res = fn(t)
                    except Exception as exc:  # record, keep measuring the rest
                        res = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
                    raw.setdefault(f"{pair}|{t}", {}).setdefault(label, []).append(res)
                    print(f"{pair} t={t} round {r} {label}: {res}", flush=True)
    summary = summarize(raw)
    out = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine_info(),
           "loadavg_at_end": os.getloadavg(), "prompt_tokens": len(ids), "new_tokens": args.new_tokens,
           "rounds": args.rounds, "summary": summary, "raw": raw}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "vendor_runtimes.json").write_text(json.dumps(out, indent=1) + "\n")
    (Path(args.out) / "vendor_runtimes.md").write_text(to_markdown(out))
    print(to_markdown(out))
    return 0


def summarize(raw):
    rows = []
    for key, by_label in raw.items():
        pair, t = key.split("|")
        med = {}
        for label, runs in by_label.items():
            ok = [r for r in runs if "error" not in r]
            keys = [k for k in ("prefill_tps", "decode_tps", "ttft_s", "prefill_cpu_ms_tok", "decode_cpu_ms_tok", "cpu_s")
                    if ok and all(k in r for r in ok)]
            med[label] = {k: statistics.median(r[k] for r in ok) for k in keys} if ok else {"error": runs[-1]["error"]}
        labels = list(med)
        for ours, theirs in zip(labels[0::2], labels[1::2]):
            a, b = med[ours], med[theirs]
            row = {"pair": pair, "threads": int(t), "ours": ours, "vendor": theirs, "ours_m": a, "vendor_m": b}
            if "error" not in a and "error" not in b:
                row["decode_ratio"] = a["decode_tps"] / b["decode_tps"]
                row["prefill_ratio"] = a["prefill_tps"] / b["prefill_tps"]
            rows.append(row)
    return rows


def to_markdown(out) -> str:
    lines = [f"# Our engines vs the vendor runtimes on the same bundle ({out['date']})", "",
             f"SmolLM2-135M-Instruct, {out['prompt_tokens']}-token prompt, {out['new_tokens']} greedy tokens, "
             f"median of {out['rounds']} interleaved rounds; {out['machine']['cpu']}, {out['machine']['cores']} cores, "
             f"load average at the end {', '.join(f'{x:.1f}' for x in out['loadavg_at_end'])}. CPU s: process CPU "
             "time (all threads) of the measured prefill + decode.", "",
             "| bundle | threads | ours | decode tok/s | prefill tok/s | vendor | decode tok/s | prefill tok/s "
             "| decode ratio | prefill ratio | decode CPU ms/tok ours / vendor | CPU s ours / vendor |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def cell(m, k):
        return f"{m[k]:.1f}" if k in m else m.get("error", "-")[:60]

    for r in out["summary"]:
        lines.append(f"| {r['pair']} | {r['threads']} | {r['ours']} | {cell(r['ours_m'], 'decode_tps')} | "
                     f"{cell(r['ours_m'], 'prefill_tps')} | {r['vendor']} | {cell(r['vendor_m'], 'decode_tps')} | "
                     f"{cell(r['vendor_m'], 'prefill_tps')} | {r.get('decode_ratio', float('nan')):.2f}x | "
                     f"{r.get('prefill_ratio', float('nan')):.2f}x | "
                     f"{cell(r['ours_m'], 'decode_cpu_ms_tok')} / {cell(r['vendor_m'], 'decode_cpu_ms_tok')} | "
                     f"{cell(r['ours_m'], 'cpu_s')} / {cell(r['vendor_m'], 'cpu_s')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
