"""Issue #19's operating points on SmolLM2-135M: activation-aware techniques vs the naive ones.

    python benchmarks/compression_useful.py                    # every row, one at a time (~25-40 min, 2 cores)
    python benchmarks/compression_useful.py --only wanda50,gptq  # some rows; the others are kept from the JSON
    python benchmarks/compression_useful.py --calib-tokens 2048 --threads 1 \
        --only wanda50,wanda50_owl,sparsegpt50,sparsegpt50_owl,wanda24,sparsegpt24 \
        --out benchmarks/results/compression_useful_owl.json   # per-layer (OWL) vs uniform sparsity

Same prompts and metrics as benchmarks/compression_table.py (3 parity prompts x 32 greedy source
tokens, teacher-forced; perplexity on its held-out lighthouse paragraph), scored on the torch
model of each result with the parity check's own functions (``edgeslm.compress.evaluate``).
An fp32 export of any of these models reproduces it with 100% top-1 (tests/compress/test_families.py),
so the torch figures are the fp32 bundle's. CPU-minutes are process CPU time (all threads) of
the technique itself, calibration and training included, evaluation excluded.

Calibration text: the built-in CALIBRATION_TEXT followed by docs/DESIGN.md, performance.md,
devices.md, serve.md (never the evaluation prompts or paragraph), cut at --calib-tokens.
Recovery training text: the other docs/*.md files, cut at --train-tokens.
Writes benchmarks/results/compression_useful.json after every row.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
OUT = ROOT / "benchmarks" / "results" / "compression_useful.json"


def calibration_text() -> str:
    from edgeslm.compress.data import CALIBRATION_TEXT

    docs = ["DESIGN.md", "performance.md", "devices.md", "serve.md"]  # more when --calib-tokens asks for it
    return CALIBRATION_TEXT + "\n\n" + "\n\n".join((ROOT / "docs" / d).read_text() for d in docs
                                                     if (ROOT / "docs" / d).is_file())


def training_ids(source, max_tokens: int) -> list[list[int]]:
    files = [p for p in sorted((ROOT / "docs").glob("*.md"))
             if p.name not in ("DESIGN.md", "performance.md", "devices.md", "serve.md")]
    ids: list[int] = []
    for p in files:
        ids += source.tokenizer.encode(p.read_text())
        if len(ids) >= max_tokens:
            break
    return [ids[:max_tokens]]


def rows(args):
    """name -> (description, callable(source) -> compressed SourceModel)."""
    from edgeslm.compress.distill import DistillConfig, distill
    from edgeslm.compress.gptq import QuantizeConfig, quantize_weights
    from edgeslm.compress.lowrank import LowRankConfig, low_rank_factorize
    from edgeslm.compress.prune import MagnitudePruneConfig, StructuredPruneConfig, magnitude_prune, structured_prune
    from edgeslm.compress.sparsity import SparsityConfig, activation_sparsify

    cal, ct = calibration_text(), args.calib_tokens
    lr_targets = ("mlp", "attention")

    def pruned(src):
        return structured_prune(src, StructuredPruneConfig(head_ratio=0.34, mlp_ratio=1 / 3), cal)

    def recovered(src):
        student = pruned(src)
        data = training_ids(src, args.train_tokens)
        cfg = DistillConfig(steps=args.steps, seq_len=64, batch_size=4, lr=args.lr, warmup=5, checkpoint_every=0)
        return distill(src, student, data, cfg, progress=False)

    def lowrank_recovered(src):
        student = low_rank_factorize(src, LowRankConfig(energy=None, size_ratio=args.keep, targets=lr_targets,
                                                        whiten=True, allocation="global", calibration_tokens=ct), cal)
        data = training_ids(src, args.train_tokens)
        cfg = DistillConfig(steps=args.steps, seq_len=64, batch_size=4, lr=args.lr / 2, warmup=5, checkpoint_every=0)
        return distill(src, student, data, cfg, progress=False)

    def sparse(method="wanda", pattern="unstructured", layerwise="uniform", lam=0.08):
        cfg = SparsityConfig(0.5, pattern=pattern, method=method, layerwise=layerwise, owl_lambda=lam)
        return lambda src: activation_sparsify(src, cfg, cal, ct)

    def sparse_recovered(pattern):
        def fn(src):
            student = activation_sparsify(src, SparsityConfig(0.5, pattern=pattern), cal, ct)
            data = training_ids(src, args.train_tokens)
            cfg = DistillConfig(steps=args.steps, seq_len=64, batch_size=4, lr=args.lr / 2, warmup=5,
                                checkpoint_every=0, keep_zeros=True)
            return distill(src, student, data, cfg, progress=False)
        return fn

    return {
        "wanda50_kd": (f"Wanda 50% + recovery KD {args.steps} steps (zeros kept)", sparse_recovered("unstructured")),
        "wanda24_kd": (f"Wanda 2:4 + recovery KD {args.steps} steps (zeros kept)", sparse_recovered("2:4")),
        "magnitude50": ("50% unstructured, magnitude (baseline)",
                        lambda s: magnitude_prune(s, MagnitudePruneConfig(sparsity=0.5))),
        "wanda50": ("50% unstructured, Wanda (activation-aware)",
                    lambda s: activation_sparsify(s, SparsityConfig(0.5), cal, ct)),
        "wanda24": ("2:4 semi-structured, Wanda",
                    lambda s: activation_sparsify(s, SparsityConfig(0.5, pattern="2:4"), cal, ct)),
        "sparsegpt50": ("50% unstructured, SparseGPT (second-order, weights updated)",
                        lambda s: activation_sparsify(s, SparsityConfig(0.5, method="sparsegpt"), cal, ct)),
        "sparsegpt24": ("2:4 semi-structured, SparseGPT",
                        lambda s: activation_sparsify(s, SparsityConfig(0.5, pattern="2:4", method="sparsegpt"), cal, ct)),
        "wanda50_owl": ("50% unstructured, Wanda, OWL per-layer ratios (lambda 0.08, M 5)", sparse(layerwise="owl")),
        "wanda50_owl04": ("50% unstructured, Wanda, OWL (lambda 0.04, M 5)", sparse(layerwise="owl", lam=0.04)),
        "wanda50_owl15": ("50% unstructured, Wanda, OWL (lambda 0.15, M 5)", sparse(layerwise="owl", lam=0.15)),
        "sparsegpt50_owl": ("50% unstructured, SparseGPT, OWL per-layer ratios (lambda 0.08, M 5)",
                            sparse("sparsegpt", layerwise="owl")),
        "sparsegpt50_owl04": ("50% unstructured, SparseGPT, OWL (lambda 0.04, M 5)",
                              sparse("sparsegpt", layerwise="owl", lam=0.04)),
        "sparsegpt50_owl15": ("50% unstructured, SparseGPT, OWL (lambda 0.15, M 5)",
                              sparse("sparsegpt", layerwise="owl", lam=0.15)),
        "magnitude24": ("2:4 semi-structured, magnitude (baseline)",
                        lambda s: _magnitude_24(s)),
        "svd": (f"low-rank, plain SVD, {args.keep:.0%} of linear weights per matrix",
                lambda s: low_rank_factorize(s, LowRankConfig(energy=None, size_ratio=args.keep, targets=lr_targets))),
        "whiten": (f"low-rank, whitened SVD, {args.keep:.0%} per matrix",
                   lambda s: low_rank_factorize(s, LowRankConfig(energy=None, size_ratio=args.keep, targets=lr_targets,
                                                                 whiten=True, calibration_tokens=ct), cal)),
        "whiten_global": (f"low-rank, whitened SVD, {args.keep:.0%} overall, ranks by sensitivity",
                          lambda s: low_rank_factorize(s, LowRankConfig(energy=None, size_ratio=args.keep,
                                                                        targets=lr_targets, whiten=True,
                                                                        allocation="global", calibration_tokens=ct), cal)),
        "whiten_global_kd": (f"low-rank whitened global {args.keep:.0%} + recovery KD {args.steps} steps",
                             lowrank_recovered),
        "rtn": ("int4 round-to-nearest (block 32, asym; decoder linears)",
                lambda s: quantize_weights(s, QuantizeConfig(method="rtn"))),
        "gptq": ("int4 GPTQ (block 32, asym; decoder linears)",
                 lambda s: quantize_weights(s, QuantizeConfig(method="gptq", calibration_tokens=ct), cal)),
        "rtn_minmax": ("int4 round-to-nearest on Q4_1's grid (block 32, scale (max-min)/15, float min)",
                       lambda s: quantize_weights(s, QuantizeConfig(method="rtn", grid="minmax"))),
        "gptq_minmax": ("int4 GPTQ on Q4_1's grid (block 32, float min)",
                        lambda s: quantize_weights(s, QuantizeConfig(method="gptq", grid="minmax",
                                                                     calibration_tokens=ct), cal)),
        "gptq_minmax_act": ("int4 GPTQ on Q4_1's grid, act-order (static groups)",
                            lambda s: quantize_weights(s, QuantizeConfig(method="gptq", grid="minmax", act_order=True,
                                                                         calibration_tokens=ct), cal)),
        "gptq_act": ("int4 GPTQ on the MatMulNBits grid, act-order (static groups)",
                     lambda s: quantize_weights(s, QuantizeConfig(method="gptq", act_order=True,
                                                                  calibration_tokens=ct), cal)),
        "pruned": ("structured: heads 9->6, MLP 1536->1024, no recovery", pruned),
        "pruned_kd": (f"structured (same) + recovery KD {args.steps} steps x 4 x 64 tokens", recovered),
    }


def _magnitude_24(src):
    import copy

    import torch

    from edgeslm.compress import layout
    from edgeslm.compress.model import derive
    from edgeslm.compress.sparsity import wanda_mask

    module = copy.deepcopy(src.module)
    with torch.no_grad():
        for _, lin in layout.dense_linears(module, src.spec.description):
            lin.weight.mul_(wanda_mask(lin.weight, torch.ones(lin.in_features), 0.5, (2, 4)))
    return derive(src, module, {"technique": "magnitude_2of4"})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--only", default="")
    ap.add_argument("--calib-tokens", type=int, default=512)
    ap.add_argument("--keep", type=float, default=0.74, help="fraction of the decoder linears' weights kept (low-rank)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--train-tokens", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)

    from compression_setup import save, setup
    from edgeslm.compress.evaluate import TorchEngine
    from edgeslm.compress.model import count_nonzero

    out = Path(args.out)
    results, source, ev = setup(args, out)
    base_params = source.spec.num_parameters
    table = rows(args)
    chosen = [r for r in args.only.split(",") if r] or list(table)
    results.update(model=args.model, machine=f"{platform.machine()}, {os.cpu_count()} cores", torch_threads=args.threads,
                   calibration_tokens=args.calib_tokens, source_parameters=base_params)
    for key in chosen:
        desc, fn = table[key]
        load0 = os.getloadavg()[0]
        t0, w0 = time.process_time(), time.perf_counter()
        model = fn(source)
        cpu, wall = time.process_time() - t0, time.perf_counter() - w0
        rep = ev.score(TorchEngine(model)).to_dict()
        row = {"row": key, "what": desc, "parameters": model.spec.num_parameters,
               "parameters_removed": 1 - model.spec.num_parameters / base_params,
               "nonzero": count_nonzero(model.module), "cpu_minutes": round(cpu / 60, 2), "wall_minutes": round(wall / 60, 2),
               "load_at_start": round(load0, 1), "steps": model.spec.extra.get("compression", [])[-3:],
               **{k: rep[k] for k in ("top1_agreement", "kl_mean", "perplexity_export", "perplexity_source") if k in rep}}
        results["rows"][key] = row
        save(results, out)
        print(f"{key:18s} top1 {row['top1_agreement']:.1%}  KL {row['kl_mean']:.4f}  ppl {row.get('perplexity_export', 0):.2f}"
              f"  params -{row['parameters_removed']:.1%}  cpu {row['cpu_minutes']} min", flush=True)
        del model
    return 0


if __name__ == "__main__":
    sys.exit(main())
