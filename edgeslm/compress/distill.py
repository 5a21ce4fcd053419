"""Knowledge distillation: a smaller student learns the teacher's next-token distributions.

The student is a model of the teacher's family with fewer layers and/or narrower MLP, attention or hidden
size, initialized from the teacher where shapes allow (layers picked evenly, heads, channels
and hidden dimensions picked by importance, see :mod:`.prune`). It is trained with
KL(teacher || student) on the teacher's logits, optionally plus cross-entropy on the text's
own next tokens and hidden-state matching (matched decoder layers' outputs, see
:func:`hidden_loss`), on a text file or on text the teacher generates from seed prompts.
CPU-sized defaults; checkpoints every N steps; ``resume=True`` continues from the last one.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from ..outputs import make_dir
from ..sources import SourceModel
from . import layout
from .model import count_parameters, derive
from .prune import _build_like, importance_scores


@dataclass(frozen=True)
class StudentConfig:
    num_layers: int = 4  # teacher layers kept, evenly spaced, first and last included
    intermediate_size: int | None = None  # None = the teacher's
    hidden_size: int | None = None  # None = the teacher's (then embeddings are copied exactly)
    num_heads: int | None = None  # None = the teacher's; a multiple of its KV heads


@dataclass(frozen=True)
class DistillConfig:
    steps: int = 200  # optimizer steps; a few hundred fit a CPU coffee break for ~40M students
    seq_len: int = 64  # tokens per training window
    batch_size: int = 4
    lr: float = 5e-4  # AdamW, linear warm-up then cosine decay
    warmup: int = 10
    temperature: float = 1.0  # softens both distributions in the KL term
    hard_weight: float = 0.0  # weight of cross-entropy on the text's own next tokens
    kd_weight: float = 1.0  # weight of the KL term (0 with hard_weight > 0: the no-teacher baseline)
    checkpoint_every: int = 50  # steps between checkpoints (0 = none)
    seed: int = 0
    # keep zeroed decoder weights at zero (recovering a sparse model: the mask is the point)
    keep_zeros: bool = False
    # weight of hidden-state matching: 1 - cosine similarity between matched decoder layers'
    # outputs (see hidden_loss); needs the teacher's hidden size
    hidden_weight: float = 0.0
    # (student layer, teacher layer) pairs to match; None = layer i <-> i at equal depth, else the
    # teacher layers a make_student student was initialized from
    hidden_layers: tuple[tuple[int, int], ...] | None = None


# -- the student -------------------------------------------------------------------------------
def make_student(teacher: SourceModel, config: StudentConfig, calibration_text: str | None = None) -> SourceModel:
    """A smaller model of the teacher's family initialized from its weights (sliced where sizes
    shrink; which weights hold a head, a channel or a hidden dim comes from the description)."""
    import torch

    spec, module = teacher.spec, teacher.module
    n = spec.num_layers
    if not 1 <= config.num_layers <= n:
        raise ValueError(f"student layers must be in 1..{n}")
    layers = sorted({round(i * (n - 1) / max(config.num_layers - 1, 1)) for i in range(config.num_layers)})
    hidden = config.hidden_size or spec.hidden_size
    inter = config.intermediate_size or spec.intermediate_size
    heads = config.num_heads or spec.num_heads
    kv, hd = spec.num_kv_heads, spec.head_dim
    if heads % kv or heads > spec.num_heads or hidden > spec.hidden_size or inter > spec.intermediate_size:
        raise ValueError("student sizes must not exceed the teacher's, and heads must be a multiple of KV heads")
    desc = spec.description
    layout.refuse_factorized(module, desc, "make_student")
    head_scores, channel_scores = importance_scores(teacher, calibration_text)
    sd = dict(module.state_dict())
    emb = sd["model.embed_tokens.weight"]  # (vocab, hidden)
    hk = torch.arange(spec.hidden_size) if hidden == spec.hidden_size else \
        emb.norm(dim=0).topk(hidden).indices.sort().values  # kept hidden dims
    hk = hk.tolist()
    new = {"model.embed_tokens.weight": emb[:, hk], "model.norm.weight": sd["model.norm.weight"][hk]}
    if not spec.tie_word_embeddings:
        new["lm_head.weight"] = sd["lm_head.weight"][:, hk]
        if "lm_head.bias" in sd:
            new["lm_head.bias"] = sd["lm_head.bias"]
    group, keep_group = spec.num_heads // kv, heads // kv
    for j, i in enumerate(layers):
        p, q = f"model.layers.{i}.", f"model.layers.{j}."
        hs = head_scores[i].view(kv, group)  # (kv, group)
        q_heads = [g * group + h for g in range(kv) for h in sorted(hs[g].topk(keep_group).indices.tolist())]
        ch = channel_scores[i].topk(inter).indices.sort().values.tolist()
        layer = {k: v for k, v in sd.items() if k.startswith(p)}
        layout.slice_heads(layer, p, desc.blocks[i], q_heads, list(range(kv)))
        layout.slice_channels(layer, p, desc.blocks[i], ch)
        new.update(layout.slice_hidden(layer, p, desc, i, hk, out_prefix=q))
    cfg = module.config.to_dict()
    cfg.update(num_hidden_layers=len(layers), hidden_size=hidden, intermediate_size=inter,
               num_attention_heads=heads, num_key_value_heads=kv, head_dim=hd,
               **layout.layer_config_updates(cfg, layers))
    student = _build_like(module, cfg, {k: v.clone() for k, v in new.items()})
    step = {"technique": "student_init", **asdict(config), "teacher_layers": layers,
            "parameters": [count_parameters(module), count_parameters(student)]}
    return derive(teacher, student, step, name=f"{teacher.name}-student")


# -- data ------------------------------------------------------------------------------------
def teacher_text(teacher: SourceModel, prompts: Sequence[str], new_tokens: int = 128, samples: int = 2,
                 temperature: float = 0.8, seed: int = 0) -> list[list[int]]:
    """Token ids of prompts continued by the teacher (sampled), ``samples`` per prompt."""
    import torch

    torch.manual_seed(seed)
    out = []
    pad = teacher.spec.eos_token_ids[0] if teacher.spec.eos_token_ids else 0
    for prompt in prompts:
        ids = torch.tensor([teacher.tokenizer.encode(prompt)])
        with torch.no_grad():
            gen = teacher.module.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                          temperature=temperature, top_k=50, max_new_tokens=new_tokens,
                                          num_return_sequences=samples, pad_token_id=pad)
        out += [row.tolist() for row in gen]
    return out


def windows(sequences: Sequence[Sequence[int]], seq_len: int) -> "object":
    """(N, seq_len) int64 tensor of training windows: each sequence (or the joined stream) cut up."""
    import torch

    stream = [t for s in sequences for t in s]
    if len(stream) < seq_len + 1:
        raise ValueError(f"need at least {seq_len + 1} tokens of training text, got {len(stream)}")
    stride = max(1, seq_len // 2) if len(stream) < 8 * seq_len else seq_len  # overlap scarce text
    rows = [stream[i:i + seq_len] for i in range(0, len(stream) - seq_len + 1, stride)]
    return torch.tensor(rows, dtype=torch.int64)


# -- training --------------------------------------------------------------------------------
def kd_loss(student_logits, teacher_logits, temperature: float = 1.0):
    """Mean over positions of T^2 * KL(teacher || student) at temperature T."""
    import torch.nn.functional as F

    t = temperature
    vocab = student_logits.shape[-1]
    s = F.log_softmax(student_logits.reshape(-1, vocab) / t, dim=-1)  # (batch*seq, vocab)
    p = F.log_softmax(teacher_logits.reshape(-1, vocab) / t, dim=-1)
    return F.kl_div(s, p, log_target=True, reduction="batchmean") * t * t


def hidden_loss(student_states: dict, teacher_states: dict, pairs: Sequence[tuple[int, int]]):
    """Mean over the matched (student layer, teacher layer) pairs and over positions of
    1 - cosine similarity between the layers' outputs (hidden states).

    Scale-free per position, because the residual stream's scale grows with depth and differs by
    token (attention-sink positions carry outsized activations). On SmolLM2-135M pruned -24.7% + 60
    recovery steps it beat the relative squared error ||s - t||^2 / ||t||^2 (47.9% vs 43.8% top-1,
    KL 1.41 vs 1.49; docs/compression.md, third round)."""
    import torch.nn.functional as F

    total = 0.0
    for s_layer, t_layer in pairs:
        s, t = student_states[s_layer].float(), teacher_states[t_layer].float()  # (batch, seq, hidden)
        total = total + (1 - F.cosine_similarity(s, t, dim=-1)).mean()
    return total / len(pairs)


def hidden_pairs(teacher: SourceModel, student: SourceModel, config: DistillConfig) -> list[tuple[int, int]]:
    """The (student layer, teacher layer) pairs whose outputs ``hidden_weight`` matches.

    ``config.hidden_layers`` if given; else layer i <-> i when both have the same depth (a pruned,
    sparse or low-rank model and its source); else the teacher layers a :func:`make_student`
    student was initialized from (its compression history records them)."""
    ns, nt = student.spec.num_layers, teacher.spec.num_layers
    if student.spec.hidden_size != teacher.spec.hidden_size:
        raise ValueError(f"hidden-state matching needs the teacher's hidden size (student {student.spec.hidden_size}"
                         f", teacher {teacher.spec.hidden_size}): use hidden_weight=0 for a narrower student")
    pairs = config.hidden_layers
    if pairs is None and ns == nt:
        pairs = tuple((i, i) for i in range(ns))
    if pairs is None:
        inits = [s for s in student.spec.extra.get("compression", []) if s.get("technique") == "student_init"]
        kept = inits[-1].get("teacher_layers", []) if inits else []
        if len(kept) != ns or max(kept, default=nt) >= nt:
            raise ValueError(f"no layer mapping for a {ns}-layer student of a {nt}-layer teacher: give hidden_layers "
                             "as (student layer, teacher layer) pairs")
        pairs = tuple(enumerate(kept))
    pairs = [(int(a), int(b)) for a, b in pairs]
    if not pairs or any(not (0 <= a < ns and 0 <= b < nt) for a, b in pairs):
        raise ValueError(f"hidden_layers must be (student layer < {ns}, teacher layer < {nt}) pairs, got {pairs}")
    return pairs


@contextlib.contextmanager
def layer_outputs(module, layers: Sequence[int]):
    """Within the block, every forward of ``module`` stores the outputs of its decoder layers
    ``layers`` in the yielded dict (layer index -> (batch, seq, hidden) tensor)."""
    got: dict[int, object] = {}
    blocks = module.get_submodule("model.layers")

    def keep(i):
        def hook(_module, _inputs, out):
            got[i] = out[0] if isinstance(out, tuple) else out
        return hook

    handles = [blocks[i].register_forward_hook(keep(i)) for i in sorted(set(layers))]
    try:
        yield got
    finally:
        for h in handles:
            h.remove()


def _check(teacher: SourceModel, student: SourceModel, config: DistillConfig) -> list[tuple[int, int]]:
    """Refuses configs that cannot train; the hidden-state pairs (empty without hidden_weight)."""
    if teacher.spec.vocab_size != student.spec.vocab_size:
        raise ValueError("teacher and student must share the vocabulary")
    if min(config.kd_weight, config.hard_weight, config.hidden_weight) < 0:
        raise ValueError("kd_weight, hard_weight and hidden_weight must be >= 0")
    if config.kd_weight <= 0 and config.hard_weight <= 0 and config.hidden_weight <= 0:
        raise ValueError("kd_weight, hard_weight and hidden_weight are all 0: nothing to train on")
    return hidden_pairs(teacher, student, config) if config.hidden_weight > 0 else []


def _lr_at(config: DistillConfig, step: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    import math

    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    frac = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))


def _losses(teacher, model, batch, config: DistillConfig, pairs):
    """(training loss, hidden-state loss or None) of one batch; the teacher runs only if needed."""
    import torch
    import torch.nn.functional as F

    with layer_outputs(model, [s for s, _ in pairs]) as s_states:
        s_logits = model(batch).logits
    loss, hidden = s_logits.new_zeros(()), None
    if config.kd_weight > 0 or pairs:
        with torch.no_grad(), layer_outputs(teacher.module, [t for _, t in pairs]) as t_states:
            t_logits = teacher.module(batch).logits  # (batch, seq, vocab)
    if config.kd_weight > 0:
        loss = loss + config.kd_weight * kd_loss(s_logits, t_logits, config.temperature)
    if pairs:
        hidden = hidden_loss(s_states, t_states, pairs)
        loss = loss + config.hidden_weight * hidden
    if config.hard_weight:
        ce = F.cross_entropy(s_logits[:, :-1].reshape(-1, s_logits.shape[-1]), batch[:, 1:].reshape(-1))
        loss = loss + config.hard_weight * ce
    return loss, hidden


def distill(teacher: SourceModel, student: SourceModel, data: Sequence[Sequence[int]], config: DistillConfig,
            out_dir: str | Path | None = None, resume: bool = False, progress: bool = True,
            on_step=None, curve=None) -> SourceModel:
    """Train ``student`` on ``data`` (token-id sequences) to match ``teacher``; returns the trained model.

    Checkpoints go to ``out_dir/checkpoints/step-NNNNNN.pt`` (the last two are kept).
    ``on_step(steps_done, module)``, if given, is called after every optimizer step (e.g. to
    evaluate a recovery curve); the module is in train mode and must be left as found.
    ``curve`` (a :class:`edgeslm.compress.curve.Curve`) is scored at step 0, at its interval and
    at the last step, against the training CPU time so far; the result's step records that time
    as ``cpu_seconds`` (optimizer steps only, across resumed runs).
    """
    import torch

    pairs = _check(teacher, student, config)
    data_t = windows(data, config.seq_len)  # (N, seq)
    model = student.module
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    masks = _zero_masks(student) if config.keep_zeros else []
    gen = torch.Generator().manual_seed(config.seed)
    ckpt_dir = Path(out_dir) / "checkpoints" if out_dir else None
    start, history, hidden_history, cpu = (_resume(ckpt_dir, model, opt, gen) if resume and ckpt_dir
                                           else (0, [], [], 0.0))
    tokens_per_step = config.batch_size * config.seq_len
    if curve is not None:
        curve.restore(start)
        if curve.due(start, config.steps):
            curve.measure(start, model, student.spec, cpu, start * tokens_per_step)
    t0 = time.perf_counter()
    bar = _progress(progress, config.steps)
    with bar:
        task = bar.add_task("distilling", total=config.steps, completed=start, loss=float("nan"))
        for step in range(start, config.steps):
            c0 = time.process_time()
            batch = data_t[torch.randint(len(data_t), (config.batch_size,), generator=gen)]  # (batch, seq)
            loss, hidden = _train_step(teacher, model, opt, batch, config, pairs, step, masks)
            history.append(loss)
            if hidden is not None:
                hidden_history.append(hidden)
            cpu += time.process_time() - c0
            bar.update(task, advance=1, loss=history[-1])
            done = step + 1
            if on_step is not None:
                on_step(done, model)
            if ckpt_dir and config.checkpoint_every and (done % config.checkpoint_every == 0 or done == config.steps):
                _save_checkpoint(ckpt_dir, done, model, opt, gen, history, hidden_history, cpu)
            if curve is not None and curve.due(done, config.steps):
                curve.measure(done, model, student.spec, cpu, done * tokens_per_step)
    model.eval()
    step = {"technique": "distill", **asdict(config), "teacher": teacher.name, "windows": len(data_t),
            "loss_first": history[0] if history else None, "loss_last": history[-1] if history else None,
            "seconds": round(time.perf_counter() - t0, 1), "cpu_seconds": round(cpu, 1)}
    if pairs:
        step.update(hidden_pairs=pairs, hidden_first=hidden_history[0] if hidden_history else None,
                    hidden_last=hidden_history[-1] if hidden_history else None)
    return derive(student, model, step, name=student.name)


def _train_step(teacher, model, opt, batch, config: DistillConfig, pairs, step: int, masks):
    """One optimizer step on ``batch`` (learning rate of ``step``, gradients clipped to 1, a sparse
    model's zeros put back); (loss, hidden-state loss or None) as floats."""
    import torch

    loss, hidden = _losses(teacher, model, batch, config, pairs)
    for g in opt.param_groups:
        g["lr"] = _lr_at(config, step)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    _apply_masks(masks)
    return loss.item(), None if hidden is None else hidden.item()


def _zero_masks(student: SourceModel) -> list:
    """(linear, nonzero mask) of every decoder linear: recovering a sparse model keeps its zeros."""
    from .layout import dense_linears

    return [(lin, lin.weight.detach() != 0) for _, lin in dense_linears(student.module, student.spec.description)]


def _apply_masks(masks) -> None:
    if masks:
        import torch

        with torch.no_grad():
            for lin, mask in masks:
                lin.weight.mul_(mask)


def _resume(ckpt_dir: Path, model, opt, gen) -> tuple[int, list, list, float]:
    """Loads the last checkpoint into model, optimizer and sampler: (steps done, loss history,
    hidden-loss history, training CPU seconds); (0, [], [], 0.0) when there is none."""
    import torch

    last = latest_checkpoint(ckpt_dir)
    if last is None:
        return 0, [], [], 0.0
    state = torch.load(last, weights_only=False)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    gen.set_state(state["generator"])
    return state["step"], state.get("history", []), state.get("hidden_history", []), state.get("cpu_seconds", 0.0)


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = sorted(Path(ckpt_dir).glob("step-*.pt"))
    return found[-1] if found else None


def _save_checkpoint(ckpt_dir: Path, step: int, model, opt, gen, history, hidden_history=(),
                     cpu_seconds: float = 0.0) -> None:
    import torch

    make_dir(ckpt_dir, "checkpoint folder")
    path = ckpt_dir / f"step-{step:06d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save({"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "generator": gen.get_state(), "history": history,
                "hidden_history": list(hidden_history), "cpu_seconds": cpu_seconds}, tmp)
    tmp.replace(path)
    for old in sorted(ckpt_dir.glob("step-*.pt"))[:-2]:
        old.unlink()


def _progress(enabled: bool, total: int):
    if not enabled:
        class _Null(contextlib.nullcontext):
            def add_task(self, *a, **k):
                return 0

            def update(self, *a, **k):
                pass
        return _Null()
    import sys

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn(),
                    console=Console(file=sys.stderr))
