"""int4-gguf per GGUF block type: file size and decode time per step (graph writer, onnxruntime CPU).

    python benchmarks/gguf_types.py --threads 1,2 --rounds 3          # both parts
    python benchmarks/gguf_types.py --parts types                      # synthetic model only

Part "types": a random llama-shaped model (hidden 1024, MLP 2816, 4 layers, 16/4 heads, tiny
vocabulary) written as a GGUF once per type (every matrix in that type; "Q4_K_M" is llama.cpp's
mix: Q4_K with attn_v/ffn_down Q6_K on half the layers; "F16" stays fp32 MatMul), transcoded by
the graph writer (accuracy_level 4) and decoded interleaved in one process: wall ms and process
CPU ms per step (32-token prompt, 32 steps, median of rounds). Part "smollm2": SmolLM2's Q4_1
GGUF with the tied Q8_0 embedding/lm_head as ONE codes initializer (GatherBlockQuantized +
MatMulNBits) against a copy of the same graph with the lm_head's codes duplicated (the layout
before). Writes benchmarks/results/gguf_types.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TYPES = ["Q4_0", "Q4_1", "Q4_K", "Q4_K_M", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0", "F16"]
SHAPE = {"hidden_size": 1024, "intermediate_size": 2816, "num_attention_heads": 16, "num_key_value_heads": 4,
         "head_dim": 64, "num_hidden_layers": 4}


def q4_k_m(layers: int) -> dict[str, str]:
    plan = {"token_embd.weight": "Q6_K", "output.weight": "Q6_K"}
    for i in range(layers):
        for t in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"):
            plan[f"blk.{i}.{t}.weight"] = "Q4_K"
        for t in ("attn_v", "ffn_down"):
            plan[f"blk.{i}.{t}.weight"] = "Q6_K" if i % 2 == 0 else "Q4_K"
    return plan


def write(source, path: Path) -> None:
    import onnx

    from edgeslm_onnx.graph_writer import DecoderWriter
    from edgeslm_onnx.weights import GgufWeights

    state = {k: v.detach().float().numpy() for k, v in source.module.state_dict().items()}
    weights = GgufWeights(state, str(source.path), source.spec.num_heads, source.spec.num_kv_heads)
    model = DecoderWriter(source.spec.description, weights, 256, 4).model()
    onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + ".data")


def weight_bytes(path: Path) -> int:
    return path.stat().st_size + Path(str(path) + ".data").stat().st_size


def timed(runners: dict, prompt, steps: int, rounds: int) -> dict:
    for r in runners.values():
        r.generate(prompt, 4)  # warm-up
    wall, cpu = {v: [] for v in runners}, {v: [] for v in runners}
    for _ in range(rounds):
        for v, r in runners.items():
            c = time.process_time()
            dt, _ = r.generate(prompt, steps)
            wall[v].append(dt)
            cpu[v].append((time.process_time() - c) / (steps + 1))  # the prefill's CPU is in there too
    return {v: {"ms_per_step": statistics.median(wall[v]) * 1000, "cpu_ms_per_step": statistics.median(cpu[v]) * 1000}
            for v in runners}


def part_types(work: Path, threads: list[int], rounds: int, steps: int) -> dict:
    from q4_1_offsets import Runner

    from edgeslm import testing_gguf
    from edgeslm.sources import load_source

    paths, vocab = {}, None
    for t in TYPES:
        path = work / f"{t}.onnx"
        if not path.exists():
            saved = dict(testing_gguf.WIDE)
            testing_gguf.WIDE.update(SHAPE)
            try:
                plan = q4_k_m(SHAPE["num_hidden_layers"]) if t == "Q4_K_M" else (t,)
                tg = testing_gguf.make_family_gguf(work / f"{t}.gguf", "llama", types=plan)
            finally:
                testing_gguf.WIDE.clear()
                testing_gguf.WIDE.update(saved)
            write(load_source(tg.path), path)
        paths[t] = path
    import onnx

    vocab = onnx.load(str(paths[TYPES[0]]), load_external_data=False).graph.output[0].type.tensor_type.shape.dim[1].dim_value
    prompt = list(range(3, 35))
    out = {t: {"weight_mb": weight_bytes(p) / 1e6} for t, p in paths.items()}
    for th in threads:
        res = timed({t: Runner(p, th, vocab) for t, p in paths.items()}, prompt, steps, rounds)
        for t, r in res.items():
            out[t][f"threads_{th}"] = r
            print(f"types threads {th} {t:7s} {out[t]['weight_mb']:6.1f} MB  {r['ms_per_step']:6.2f} ms/step  "
                  f"cpu {r['cpu_ms_per_step']:6.2f} ms/step", flush=True)
    return out


def part_smollm2(work: Path, threads: list[int], rounds: int, steps: int) -> dict:
    import onnx
    from onnx import numpy_helper
    from q4_1_offsets import Runner

    from edgeslm.bench import prompt_ids
    from edgeslm.sources import load_source

    source = load_source("smollm2-135m")
    shared, separate = work / "smollm2_shared.onnx", work / "smollm2_separate.onnx"
    if not shared.exists():
        write(source, shared)
    if not separate.exists():
        m = onnx.load(str(shared))
        head = next(n for n in m.graph.node if n.name == "lm_head")
        init = next(i for i in m.graph.initializer if i.name == head.input[1])
        m.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(init).copy(), "lm_head.qweight_copy"))
        head.input[1] = "lm_head.qweight_copy"
        onnx.save_model(m, str(separate), save_as_external_data=True, location=separate.name + ".data")
    prompt = prompt_ids(source.tokenizer, 128)
    out = {"shared": {"weight_mb": weight_bytes(shared) / 1e6}, "separate": {"weight_mb": weight_bytes(separate) / 1e6}}
    for th in threads:
        res = timed({"shared": Runner(shared, th, source.spec.vocab_size),
                     "separate": Runner(separate, th, source.spec.vocab_size)}, prompt, steps, rounds)
        for v, r in res.items():
            out[v][f"threads_{th}"] = r
            print(f"smollm2 threads {th} {v:8s} {out[v]['weight_mb']:6.1f} MB  {r['ms_per_step']:6.2f} ms/step  "
                  f"cpu {r['cpu_ms_per_step']:6.2f} ms/step", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--parts", default="types,smollm2")
    ap.add_argument("--work", default="out/gguf_types")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    threads = [int(t) for t in args.threads.split(",")]
    out = HERE / "results" / "gguf_types.json"
    results = json.loads(out.read_text()) if out.exists() else {}  # one part rerun keeps the other's
    parts = args.parts.split(",")
    run = {"rounds": args.rounds, "steps": args.steps, "threads": threads}
    if "types" in parts:
        results["types"] = {"run": {**run, "shape": SHAPE}, **part_types(work, threads, args.rounds, args.steps)}
    if "smollm2" in parts:
        results["smollm2"] = {"run": run, **part_smollm2(work, threads, args.rounds, args.steps)}
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
