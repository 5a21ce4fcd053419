"""Exact Q4_1 in onnxruntime: which form of the per-block offset decodes fastest (SmolLM2 GGUF).

    python benchmarks/q4_1_offsets.py --threads 1,2 --rounds 3

Writes the SmolLM2 int4-gguf graph once per ``q4_1_offsets`` variant of the graph writer
(reduce | matmul | rows | int8 | none | fused; "int8" stores the offsets in 8 bits and "none" drops
them: both NOT exact, "none" is the upper bound of any exact form; "fused" is edgeslm's own
Q4_1/Q8_0 kernel as an onnxruntime custom op, exact),
then decodes with each, interleaved in one process (128-token prompt, 64 steps), and reports
ms per decode step, nodes per graph and the largest difference of the prefill logits to the "reduce" variant.
Writes benchmarks/results/q4_1_offsets.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


class Runner:
    """A decode loop on a graph-writer model: shared KV buffers bound once, as the engine does."""

    def __init__(self, path: Path, threads: int, vocab: int):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the engine does
        from edgeslm_onnx import kernels

        if kernels.needs_library(path):  # q4_1_offsets=fused: edgeslm's own ops
            kernels.register(so)
        self.sess = ort.InferenceSession(str(path), so)
        self.io = self.sess.io_binding()
        self.kv = []
        for i in self.sess.get_inputs():
            if i.name.startswith("past_"):
                v = ort.OrtValue.ortvalue_from_numpy(np.zeros(i.shape, np.float32))
                self.io.bind_ortvalue_input(i.name, v)
                self.io.bind_ortvalue_output("present_" + i.name[5:], v)
                self.kv.append(v)
        self.seqlens, self.total = np.zeros(1, np.int32), np.zeros((), np.int32)
        self.logits = np.zeros((1, vocab), np.float32)
        self.io.bind_ortvalue_input("seqlens_k", ort.OrtValue.ortvalue_from_numpy(self.seqlens))
        self.io.bind_ortvalue_input("total_sequence_length", ort.OrtValue.ortvalue_from_numpy(self.total))
        self.io.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(self.logits))
        self.pos = 0

    def step(self, ids) -> np.ndarray:
        self.io.bind_cpu_input("input_ids", np.asarray([ids], np.int64))
        self.pos += len(ids)
        self.seqlens[0], self.total[...] = self.pos - 1, self.pos
        self.sess.run_with_iobinding(self.io)
        return self.logits[0].copy()

    def generate(self, prompt, steps: int) -> tuple[float, float, list[np.ndarray]]:
        """Wall and process-CPU seconds per decode step, and the logits of every step."""
        self.pos = 0
        out = [self.step(prompt)]
        t, c = time.perf_counter(), time.process_time()
        for _ in range(steps):
            out.append(self.step([int(out[-1].argmax())]))
        return (time.perf_counter() - t) / steps, (time.process_time() - c) / steps, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--variants", default="reduce,matmul,rows,int8,none")
    ap.add_argument("--work", default="out/q4_1_offsets")
    ap.add_argument("--out", default="q4_1_offsets.json", help="results file name under benchmarks/results/")
    args = ap.parse_args(argv)

    import onnx

    from edgeslm.bench import prompt_ids
    from edgeslm.sources import load_source
    from edgeslm_onnx.graph_writer import DecoderWriter
    from edgeslm_onnx.weights import GgufWeights

    variants = args.variants.split(",")
    load_start = os.getloadavg()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    source = load_source("smollm2-135m")
    cfg = source.spec.description
    prompt = prompt_ids(source.tokenizer, 128)
    nodes = {}
    if not all((work / f"{v}.onnx").exists() for v in variants):
        state = {k: v.detach().float().numpy() for k, v in source.module.state_dict().items()}
        weights = GgufWeights(state, str(source.path), source.spec.num_heads, source.spec.num_kv_heads)
        for v in variants:
            model = DecoderWriter(cfg, weights, 512, 4, v).model()
            onnx.save_model(model, str(work / f"{v}.onnx"), save_as_external_data=True, location=f"{v}.onnx.data")
    for v in variants:
        nodes[v] = len(onnx.load(str(work / f"{v}.onnx"), load_external_data=False).graph.node)
    results = {"variants": {}, "nodes": nodes, "steps": args.steps, "rounds": args.rounds}
    for threads in [int(t) for t in args.threads.split(",")]:
        runners = {v: Runner(work / f"{v}.onnx", threads, cfg.vocab_size) for v in variants}
        if "fused" in variants and not results.get("fused_kernel"):  # while a session holds the library
            from edgeslm_onnx import kernels

            results["fused_kernel"] = kernels.info()  # onnxruntime version, ISA path, parallel
        for r in runners.values():
            r.generate(prompt, 4)  # warm-up
        times = {v: [] for v in variants}
        cpu = {v: [] for v in variants}
        outs = {}
        for _ in range(args.rounds):
            for v, r in runners.items():
                dt, dc, outs[v] = r.generate(prompt, args.steps)
                times[v].append(dt)
                cpu[v].append(dc)
        for v in variants:
            diff = float(np.abs(outs[v][0] - outs[variants[0]][0]).max())  # prefill logits: the same input
            ms = statistics.median(times[v]) * 1000
            results["variants"].setdefault(v, {})[f"threads_{threads}"] = {
                "ms_per_step": ms, "tok_s": 1000 / ms, "min_ms": min(times[v]) * 1000,
                "cpu_ms_per_step": statistics.median(cpu[v]) * 1000,
                "cpu_ratio_to_first": statistics.median(cpu[variants[0]]) / statistics.median(cpu[v]),
                "ratio_to_first": statistics.median(times[variants[0]]) / statistics.median(times[v]),
                "max_logit_diff_to_first": diff}
            print(f"threads {threads} {v:7s} nodes {nodes[v]:4d}  {ms:7.2f} ms/step  "
                  f"CPU {statistics.median(cpu[v]) * 1000:6.2f} ms/step  "
                  f"x{results['variants'][v][f'threads_{threads}']['ratio_to_first']:.2f}  max|dlogit| {diff:.3g}",
                  flush=True)
        del runners
    (HERE / "results").mkdir(exist_ok=True)
    results["loadavg_at_end"] = os.getloadavg()
    results["loadavg_at_start"] = load_start
    (HERE / "results" / args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
