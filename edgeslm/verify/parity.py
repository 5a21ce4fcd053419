"""The parity check every export goes through.

The source model (Hugging Face torch, float32) greedily continues a few fixed prompts; the
export's engine is then fed the *same* tokens (teacher forcing: prefill the prompt, decode the
source's tokens one by one) so each step's logits are compared like for like, through the
engine's real prefill/decode/KV-cache path. One disagreement does not cascade into the next
steps. A short fixed text measures perplexity under both.
"""

from __future__ import annotations


from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np

from .metrics import kl_divergence, nll

DEFAULT_PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "<|im_start|>user\nWhy is the sky blue?<|im_end|>\n<|im_start|>assistant\n",
)
PERPLEXITY_TEXT = (
    "The Raspberry Pi is a series of small single-board computers. It was developed in the "
    "United Kingdom to promote the teaching of basic computer science in schools. Later it "
    "became popular with hobbyists for robotics, home automation and edge computing."
)


@dataclass
class Reference:
    prompt_ids: list[int]
    continuation: list[int]  # the source's greedy tokens
    logits: np.ndarray  # (len(continuation), vocab): logits that chose each token


@dataclass
class ParityReport:
    prompts: int = 0
    tokens: int = 0  # compared positions
    top1_agreement: float = 0.0
    kl_mean: float = 0.0
    kl_max: float = 0.0
    max_abs_logit_diff: float = 0.0
    mean_abs_logit_diff: float = 0.0
    perplexity_source: float | None = None
    perplexity_export: float | None = None
    min_top1_agreement: float | None = None  # the threshold this precision must meet, if any
    passed: bool = True
    per_prompt: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def reference_run(source, prompts: Sequence[str] = DEFAULT_PROMPTS, new_tokens: int = 32) -> list[Reference]:
    """Greedy continuations and their logits from the source's Hugging Face module."""
    import torch

    from ..sources.hf_cache import cache_argument, cache_of

    refs = []
    module = source.module
    cache_arg = cache_argument(module)
    for prompt in prompts:
        ids = source.tokenizer.encode(prompt)
        cont, rows = [], []
        with torch.no_grad():
            out = module(torch.tensor([ids]), use_cache=True)
            for _ in range(new_tokens):
                logits = out.logits[0, -1].float().numpy()
                tok = int(logits.argmax())
                rows.append(logits)
                cont.append(tok)
                out = module(torch.tensor([[tok]]), use_cache=True, **{cache_arg: cache_of(out)})
        refs.append(Reference(ids, cont, np.stack(rows)))
    return refs


def source_text_nll(source, text: str = PERPLEXITY_TEXT, max_tokens: int | None = None) -> tuple[list[int], float]:
    """Token ids of ``text`` (at most ``max_tokens``) and the source's mean NLL over them."""
    import torch

    ids = source.tokenizer.encode(text)[:max_tokens]
    with torch.no_grad():
        logits = source.module(torch.tensor([ids])).logits[0].float().numpy()
    return ids, float(nll(logits[:-1], np.array(ids[1:])).mean())


def engine_text_nll(engine, ids: list[int]) -> float:
    engine.reset()
    rows = [engine.prefill(ids[:1])]
    for t in ids[1:-1]:
        rows.append(engine.decode(t))
    engine.reset()
    return float(nll(np.stack(rows), np.array(ids[1:])).mean())


def run_parity(engine, references: Sequence[Reference], text_ids: list[int] | None = None,
               source_nll: float | None = None, min_top1_agreement: float | None = None,
               progress: Callable[[int], None] | None = None) -> ParityReport:
    """Compare ``engine`` with the references; ``passed`` is False below the threshold."""
    rep = ParityReport(prompts=len(references), min_top1_agreement=min_top1_agreement)
    all_ref, all_test = [], []
    for ref in references:
        engine.reset()
        rows = [engine.prefill(ref.prompt_ids)]
        for tok in ref.continuation[:-1]:
            rows.append(engine.decode(tok))
            if progress:
                progress(1)
        test = np.stack(rows).astype(np.float32)
        agree = float((test.argmax(-1) == ref.logits.argmax(-1)).mean())
        rep.per_prompt.append({"prompt_tokens": len(ref.prompt_ids), "tokens": len(rows), "top1_agreement": agree})
        all_ref.append(ref.logits)
        all_test.append(test)
    engine.reset()
    r, t = np.concatenate(all_ref), np.concatenate(all_test)
    kl = kl_divergence(r, t)
    diff = np.abs(r - t)
    rep.tokens = len(r)
    rep.top1_agreement = float((r.argmax(-1) == t.argmax(-1)).mean())
    rep.kl_mean, rep.kl_max = float(kl.mean()), float(kl.max())
    rep.max_abs_logit_diff, rep.mean_abs_logit_diff = float(diff.max()), float(diff.mean())
    if text_ids is not None and source_nll is not None:
        rep.perplexity_source = float(np.exp(source_nll))
        rep.perplexity_export = float(np.exp(engine_text_nll(engine, text_ids)))
    if min_top1_agreement is not None:
        rep.passed = rep.top1_agreement >= min_top1_agreement
    return rep
