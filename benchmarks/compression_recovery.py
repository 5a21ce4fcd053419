"""Issue #19: recovery curves (top-1 / KL / perplexity vs CPU-minutes of training) on SmolLM2-135M.

    python benchmarks/compression_recovery.py --rows pruned --steps 250 --evals 0,30,100,250
    python benchmarks/compression_recovery.py --rows student_kd,student_ce --steps 150
    python benchmarks/compression_recovery.py --rows pruned,pruned+hidden --steps 60 --evals 0,30,60 \
        --out benchmarks/results/compression_recovery_hidden.json
    python benchmarks/compression_recovery.py --rows wanda50 --lr 3e-4 --steps 100 --evals 0,50,100 --big-eval \
        --out benchmarks/results/compression_recovery_lr.json

One training run per row (``edgeslm.compress.distill.distill``, KD on the teacher's logits,
cosine schedule over ``--steps``), scored with the parity check's functions at the steps in
``--evals`` (same prompts and metrics as benchmarks/compression_useful.py). A point of the curve is
therefore a step of the longest run (its learning rate had not decayed yet), not a separate shorter
run. CPU-minutes are process CPU time of compression + training so far, evaluation excluded.
``--lr`` overrides every row's learning rate and stores the row as ``ROW@lrLR`` (``--seed``,
distill's data-order seed, likewise as ``ROW@seedS``). ``--big-eval``
adds a second, larger evaluation (``BIG_PROMPTS``, 64 greedy tokens each: 640 scored tokens
against the default 96) to every point as ``top1_big`` / ``kl_big`` / ``big_tokens``; the
96-token figures are unchanged.

Rows:
  pruned       structured -24.7% (heads 9->6, MLP 1536->1024) + KD
  wanda50      Wanda 50% unstructured + KD with the zeros kept
  wanda50_owl, sparsegpt50, sparsegpt50_owl
               the same with OWL per-layer ratios (--owl-lambda) and/or SparseGPT (--calib-tokens 2048+)
  wanda24      Wanda 2:4 semi-structured + KD with the zeros kept (the 2:4 pattern stays)
  lowrank      whitened SVD, ranks by sensitivity, 74% of the linears' weights (-20.5%) + KD
  student_kd   4-layer student (MLP 1024) trained on the teacher's logits
  student_ce   the same student, same text and steps, trained on the text alone (no teacher)
  ROW+hidden   any row above plus hidden-state matching (``DistillConfig.hidden_weight`` =
               ``--hidden-weight``; a pruned / sparse / low-rank model's layer i <-> the teacher's
               layer i, the student's layers <-> the teacher layers they were taken from)
  ROW+hidden_relmse  the same with the relative squared error ||s - t||^2 / ||t||^2 per position in
               place of distill's 1 - cosine (the alternative loss, measured here only)

Training text: the teacher's sampled continuations of prompts that are *not* the evaluation
prompts (cached), followed by docs/*.md files not used for calibration. The student rows use the
docs text only, so the no-teacher baseline sees nothing the teacher wrote.
Writes benchmarks/results/compression_recovery.json after every evaluation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
OUT = ROOT / "benchmarks" / "results" / "compression_recovery.json"

#: teacher-text prompts; none is (or continues) an evaluation prompt of edgeslm.verify.parity
PROMPTS = (
    "Once upon a time, in a small village,",
    "def quicksort(items):\n",
    "import numpy as np\n\n\ndef normalize(",
    "The most important invention of the 20th century was",
    "Photosynthesis is the process by which",
    "The history of the Roman Empire",
    "Water boils at",
    "My favourite recipe for a quick dinner is",
    "<|im_start|>user\nExplain how a battery works.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nGive me three tips for learning to cook.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWhat is an edge device?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nHow do vaccines work?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWrite a short poem about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWhat is the difference between weather and climate?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWrite a Python function that reverses a string.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWhy do cats purr?<|im_end|>\n<|im_start|>assistant\n",
)


#: the --big-eval prompts: none is a teacher-text prompt (PROMPTS), a parity prompt
#: (edgeslm.verify.parity.DEFAULT_PROMPTS) or a seed prompt (edgeslm.compress.data.SEED_PROMPTS)
BIG_PROMPTS = (
    "The Great Wall of China was built",
    "In a recent study, researchers found that",
    "The train left the station at dawn, and",
    "Dear Sir or Madam,\n\nI am writing to",
    "To install the package, run",
    "class Stack:\n    def __init__(self):\n",
    "for i in range(10):\n",
    "<|im_start|>user\nHow does a refrigerator keep food cold?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nSuggest a name for a small bakery.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWhat causes earthquakes?<|im_end|>\n<|im_start|>assistant\n",
)
BIG_NEW_TOKENS = 64


def big_evaluator(source, enabled: bool):
    """The --big-eval Evaluator (None without it). Its perplexity text is cut to 8 tokens (an
    Evaluator needs one; perplexity is the default evaluation's), so it costs the prompts only."""
    if not enabled:
        return None
    from edgeslm.compress.evaluate import Evaluator

    return Evaluator(source, prompts=BIG_PROMPTS, new_tokens=BIG_NEW_TOKENS, max_text_tokens=8)


def big_scores(ev_big, engine) -> dict:
    """top1_big / kl_big / big_tokens of ``engine`` on the big evaluation ({} without one)."""
    if ev_big is None:
        return {}
    rep = ev_big.score(engine)
    return {"top1_big": round(rep.top1_agreement, 4), "kl_big": round(rep.kl_mean, 4), "big_tokens": rep.tokens}


def row_suffix(args) -> str:
    """What a row's key adds to its name: ``@lrLR`` when --lr overrides the rate, ``@seedS`` when
    --seed overrides distill's data-order seed."""
    return (f"@lr{args.lr:g}" if args.lr is not None else "") + (f"@seed{args.seed}" if args.seed is not None else "")


def overrides(args) -> dict:
    """The DistillConfig fields that --lr / --seed set for every row."""
    return {k: v for k, v in (("lr", args.lr), ("seed", args.seed)) if v is not None}


def reused_zero(results: dict, name: str, suffix: str, big: bool) -> dict | None:
    """The step-0 point of ROW (for ROW+hidden...), same suffix, if it was scored with the same
    evaluations: the start model is the same, so it is not scored twice."""
    if "+" not in name:
        return None
    base = results["rows"].get(name.split("+")[0] + suffix, {})
    zero = [p for p in base.get("points", []) if p["step"] == 0 and (not big or "top1_big" in p)]
    return {**zero[0], "same_as": base["row"]} if zero else None


def teacher_ids(source, cache: Path, samples: int, new_tokens: int) -> tuple[list[list[int]], float]:
    from edgeslm.compress.distill import teacher_text

    if cache.is_file():
        d = json.loads(cache.read_text())
        if d.get("samples") == samples and d.get("new_tokens") == new_tokens:
            return d["ids"], d["cpu_seconds"]
    t0 = time.process_time()
    ids = teacher_text(source, PROMPTS, new_tokens=new_tokens, samples=samples)
    cpu = time.process_time() - t0
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"samples": samples, "new_tokens": new_tokens, "cpu_seconds": cpu, "ids": ids}))
    return ids, cpu


def build(name: str, source, args):
    """(compressed start model, DistillConfig overrides)."""
    from compression_useful import calibration_text
    from edgeslm.compress.distill import StudentConfig, make_student
    from edgeslm.compress.lowrank import LowRankConfig, low_rank_factorize
    from edgeslm.compress.prune import StructuredPruneConfig, structured_prune
    from edgeslm.compress.sparsity import SparsityConfig, activation_sparsify

    cal = calibration_text()
    if name == "pruned":
        return structured_prune(source, StructuredPruneConfig(head_ratio=0.34, mlp_ratio=1 / 3), cal), {"lr": 2e-4}
    if name in ("wanda50", "wanda50_owl", "sparsegpt50", "sparsegpt50_owl"):
        cfg = SparsityConfig(0.5, method=name.split("50")[0], layerwise="owl" if name.endswith("_owl") else "uniform",
                             owl_lambda=args.owl_lambda)
        return activation_sparsify(source, cfg, cal, args.calib_tokens), {"lr": 1e-4, "keep_zeros": True}
    if name == "wanda24":
        cfg = SparsityConfig(0.5, pattern="2:4", method="wanda")
        return activation_sparsify(source, cfg, cal, args.calib_tokens), {"lr": 1e-4, "keep_zeros": True}
    if name == "lowrank":
        cfg = LowRankConfig(energy=None, size_ratio=0.74, targets=("mlp", "attention"), whiten=True,
                            allocation="global", calibration_tokens=args.lowrank_calib_tokens)
        return low_rank_factorize(source, cfg, cal), {"lr": 1e-4}
    if name.endswith(("+hidden", "+hidden_relmse")):
        start, over = build(name.split("+")[0], source, args)
        return start, {**over, "hidden_weight": args.hidden_weight}
    if name in ("student_kd", "student_ce"):
        student = make_student(source, StudentConfig(num_layers=4, intermediate_size=1024), cal)
        over = {"lr": 5e-4}
        if name == "student_ce":
            over.update(kd_weight=0.0, hard_weight=1.0)
        return student, over
    raise SystemExit(f"unknown row {name}")


def rel_err(s_states, t_states, pairs):
    """||s - t||^2 / ||t||^2 per position, mean over positions and (student, teacher) layer pairs."""
    return sum(((s_states[a].float() - t_states[b].float()).pow(2).sum(-1)
                / t_states[b].float().pow(2).sum(-1).clamp_min(1e-6)).mean() for a, b in pairs) / len(pairs)


def held_out_hidden(source, cand, ids) -> float:
    """The relative squared error of ``cand``'s hidden states against ``source``'s at distill's
    matched layers, on the held-out paragraph: whether a row's hidden states move toward the teacher's."""
    import torch

    from edgeslm.compress.distill import DistillConfig, hidden_pairs, layer_outputs

    pairs = hidden_pairs(source, cand, DistillConfig(hidden_weight=1.0))
    batch = torch.tensor([list(ids)])
    with torch.no_grad(), layer_outputs(cand.module, [a for a, _ in pairs]) as got, \
            layer_outputs(source.module, [b for _, b in pairs]) as want:
        cand.module(batch)
        source.module(batch)
    return round(float(rel_err(got, want, pairs)), 4)


@contextlib.contextmanager
def _hidden_loss(relmse: bool):
    """With ``relmse``, distill's hidden-state loss is :func:`rel_err` instead of 1 - cosine; restored afterwards."""
    import edgeslm.compress.distill as d

    kept = d.hidden_loss
    if relmse:
        d.hidden_loss = rel_err
    try:
        yield
    finally:
        d.hidden_loss = kept


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rows", default="pruned")
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--evals", default="0,30,100,250")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--calib-tokens", type=int, default=512)
    ap.add_argument("--lowrank-calib-tokens", type=int, default=2048)
    ap.add_argument("--owl-lambda", type=float, default=0.08, help="the *_owl rows' per-layer bound")
    ap.add_argument("--teacher-samples", type=int, default=4)
    ap.add_argument("--teacher-tokens", type=int, default=96)
    ap.add_argument("--train-tokens", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lr", type=float, default=None,
                    help="learning rate for every row (default: each row's own); rows stored as ROW@lrLR")
    ap.add_argument("--seed", type=int, default=None,
                    help="distill's data-order seed for every row (default 0); rows stored as ROW@seedS")
    ap.add_argument("--big-eval", action="store_true",
                    help=f"also score {len(BIG_PROMPTS)} more prompts x {BIG_NEW_TOKENS} tokens (top1_big, kl_big)")
    ap.add_argument("--hidden-weight", type=float, default=1.0, help="hidden_weight of the ROW+hidden rows")
    ap.add_argument("--save", default="", help="folder: save each row's final model there (HF folder)")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--teacher-cache", default="out/compression_recovery/teacher_text.json",
                    help="the teacher-written training ids, generated once and reused")
    args = ap.parse_args(argv)

    from compression_setup import save, setup
    from compression_useful import training_ids
    from edgeslm.compress.distill import DistillConfig, distill
    from edgeslm.compress.evaluate import TorchEngine
    from edgeslm.compress.model import derive, save_hf_folder

    out = Path(args.out)
    results, source, ev = setup(args, out)
    ev_big = big_evaluator(source, args.big_eval)
    evals = sorted({int(e) for e in args.evals.split(",") if e})
    t_ids, t_cpu = teacher_ids(source, Path(args.teacher_cache), args.teacher_samples,
                               args.teacher_tokens)
    docs = training_ids(source, args.train_tokens)
    for name in [r for r in args.rows.split(",") if r]:
        p0 = time.process_time()
        start, over = build(name, source, args)
        build_cpu = time.process_time() - p0
        over = {**over, **overrides(args)}
        key = name + row_suffix(args)
        data = docs if name.startswith("student") else t_ids + docs
        cfg = DistillConfig(steps=args.steps, seq_len=args.seq, batch_size=args.batch, warmup=10,
                            checkpoint_every=0, **over)
        row = {"row": key, "parameters": start.spec.num_parameters, "build_cpu_minutes": round(build_cpu / 60, 2),
               "teacher_text_cpu_minutes": round(t_cpu / 60, 2) if data is not docs else 0.0,
               "train_tokens": sum(len(s) for s in data), "config": {k: v for k, v in vars(cfg).items()},
               "compression": start.spec.extra.get("compression", [])[-1:], "points": []}
        results["rows"][key] = row
        eval_cpu = [0.0]
        t_start = time.process_time()
        w_start = time.perf_counter()

        def score(step, module):
            e0 = time.process_time()
            was_training = module.training
            module.eval()
            cand = derive(start, module, {"technique": "checkpoint", "step": step})
            rep = ev.score(TorchEngine(cand)).to_dict()
            rep["hidden_rel_err"] = held_out_hidden(source, cand, ev.text_ids)
            rep.update(big_scores(ev_big, TorchEngine(cand)))
            if was_training:
                module.train()
            train_cpu = (e0 - t_start) - eval_cpu[0]
            pt = {"step": step, "tokens": step * args.batch * args.seq,
                  "train_cpu_minutes": round(train_cpu / 60, 2),
                  "total_cpu_minutes": round((build_cpu + train_cpu) / 60 + row["teacher_text_cpu_minutes"], 2),
                  "wall_minutes": round((time.perf_counter() - w_start) / 60, 2), "load": round(os.getloadavg()[0], 1),
                  **{k: rep[k] for k in ("top1_agreement", "kl_mean", "perplexity_export", "hidden_rel_err",
                                         "top1_big", "kl_big", "big_tokens") if k in rep}}
            row["points"].append(pt)
            eval_cpu[0] += time.process_time() - e0
            save(results, out)
            big = f"  big top1 {pt['top1_big']:.1%} KL {pt['kl_big']:.3f}" if "top1_big" in pt else ""
            print(f"{key:11s} step {step:4d}  top1 {pt['top1_agreement']:.1%}  KL {pt['kl_mean']:.3f}  "
                  f"ppl {pt['perplexity_export']:.1f}{big}  train cpu {pt['train_cpu_minutes']} min  "
                  f"wall {pt['wall_minutes']} min  load {pt['load']}", flush=True)

        zero = reused_zero(results, name, row_suffix(args), ev_big is not None)
        if 0 in evals and zero:
            row["points"].append(zero)
        elif 0 in evals:
            score(0, start.module)

        def on_step(done, module):
            if done in evals:
                score(done, module)

        with _hidden_loss(relmse=name.endswith("+hidden_relmse")):
            model = distill(source, start, data, cfg, progress=False, on_step=on_step)
        last = model.spec.extra["compression"][-1]
        row["loss_first_last"] = [last.get("loss_first"), last.get("loss_last")]
        if last.get("hidden_pairs"):
            row["hidden_pairs"] = last["hidden_pairs"]
            row["hidden_loss_first_last"] = [last.get("hidden_first"), last.get("hidden_last")]
        out.write_text(json.dumps(results, indent=1, default=str) + "\n")
        if args.save:
            save_hf_folder(model, Path(args.save) / key)
        del model, start
    return 0


if __name__ == "__main__":
    sys.exit(main())
