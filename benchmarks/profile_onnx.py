"""Where a decode step of an ONNX bundle spends its time, by operator type.

    python benchmarks/profile_onnx.py out/bench/onnx-int4-gguf --threads 2 --steps 32

Uses onnxruntime's own profiler (SessionOptions.enable_profiling) on a prefill of 128 tokens
followed by ``--steps`` decode steps, and reports, for the decode steps only, the share of
kernel time per op type and the time per step spent outside kernels (session.run overhead).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=32)
    args = ap.parse_args(argv)

    import onnxruntime as ort

    from edgeslm.bench import prompt_ids
    from edgeslm.bundle import Bundle
    from edgeslm_onnx.engine import OnnxEngine

    bundle = Bundle.open(args.bundle)
    engine = OnnxEngine(bundle, threads=args.threads)
    tmp = tempfile.mkdtemp()
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(tmp, "prof")
    if bundle.manifest["artifacts"].get("custom_ops"):  # q4_1_offsets=fused: edgeslm's own ops
        from edgeslm_onnx.kernels import register

        register(so)
    engine.session = ort.InferenceSession(str(bundle.file(bundle.manifest["artifacts"]["model"])), so)
    if engine.shared_buffer:  # graph-writer bundle: bind the KV buffers to the profiling session
        engine._bind_buffers(ort)
    ids = prompt_ids(bundle.load_tokenizer(), 128)
    logits = engine.prefill(ids)
    t = time.perf_counter()
    for _ in range(args.steps):
        logits = engine.decode(int(logits.argmax()))
    wall = (time.perf_counter() - t) / args.steps
    trace = json.load(open(engine.session.end_profiling()))
    runs = [e for e in trace if e.get("cat") == "Session" and e["name"] == "model_run"]
    decode_runs = runs[-args.steps:]
    start = decode_runs[0]["ts"]
    by_op: dict[str, float] = collections.Counter()
    kernel_us = 0.0
    nodes = 0
    for e in trace:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            op = e.get("args", {}).get("op_name", "?")
            by_op[op] += e["dur"]
            kernel_us += e["dur"]
            nodes += 1
    run_us = sum(r["dur"] for r in decode_runs)
    print(f"{bundle.format}/{bundle.manifest['precision']}: {1 / wall:.1f} tok/s decode ({wall * 1000:.2f} ms/step, "
          f"threads {args.threads}); {nodes / args.steps:.0f} kernels per step")
    print(f"  inside session.run {run_us / args.steps / 1000:.2f} ms/step, of which kernels "
          f"{kernel_us / args.steps / 1000:.2f} ms; Python + binding outside run: {(wall * 1e6 - run_us / args.steps) / 1000:.2f} ms")
    for op, us in by_op.most_common(10):
        print(f"  {op:28s} {us / kernel_us:6.1%}  {us / args.steps / 1000:.3f} ms/step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
