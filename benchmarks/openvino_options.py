"""OpenVINO engine variants (bundles x engine options) timed interleaved in one process.

    python benchmarks/openvino_options.py \\
        --variant "f32=out/bench-vendor/openvino-int8" \\
        --variant 'kv-u8=out/bench-vendor/openvino-int8:{"kv_cache_precision": "u8"}' \\
        --threads 1,2 --rounds 3

Each variant is ``label=BUNDLE_DIR[:JSON engine options]``. Per round every variant runs once
(A B C ..., same prompt, greedy), so machine load hits all alike; medians are printed. Besides
wall-clock tok/s it reports process CPU time per decoded token (all threads), which is what a
shared machine distorts least. The first variant is the baseline of the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vendor_runtimes import run_ours  # noqa: E402  (the same measured loop as the vendor pairs)


def parse_variant(text: str) -> tuple[str, str, dict]:
    label, _, rest = text.partition("=")
    path, sep, opts = rest.partition(":{")
    return label, path, (json.loads("{" + opts) if sep else {})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", required=True)
    ap.add_argument("--threads", default="1")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args(argv)

    import edgeslm

    variants = [parse_variant(v) for v in args.variant]
    with edgeslm.load(variants[0][1]) as m:
        tok = m.tokenizer
    sentence = "The quick brown fox jumps over the lazy dog near the river bank."
    text = " ".join([sentence] * (args.prompt_tokens // 10 + 1))
    ids = tok.encode(text)
    ids = ids[:args.prompt_tokens]
    keys = ("decode_tps", "decode_cpu_ms_tok", "prefill_tps", "prefill_cpu_ms_tok")
    for t in [int(x) for x in args.threads.split(",")]:
        raw: dict[str, list[dict]] = {label: [] for label, _, _ in variants}
        for r in range(args.rounds):
            for label, path, opts in variants:
                res = run_ours(path, ids, args.new_tokens, t, opts)
                raw[label].append(res)
                print(f"t={t} round {r} {label}: " + ", ".join(f"{k} {res[k]:.2f}" for k in keys), flush=True)
        med = {label: {k: statistics.median(x[k] for x in runs) for k in keys} for label, runs in raw.items()}
        base = med[variants[0][0]]
        print(f"\n{args.prompt_tokens}-token prompt, {args.new_tokens} tokens, {t} thread(s), median of {args.rounds}")
        print("| variant | decode tok/s | decode CPU ms/token | prefill tok/s | prefill CPU ms/token "
              "| decode CPU vs first |")
        print("|---|---|---|---|---|---|")
        for label, m in med.items():
            print(f"| {label} | {m['decode_tps']:.1f} | {m['decode_cpu_ms_tok']:.2f} | {m['prefill_tps']:.0f} | "
                  f"{m['prefill_cpu_ms_tok']:.2f} | "
                  f"{base['decode_cpu_ms_tok'] / m['decode_cpu_ms_tok']:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
