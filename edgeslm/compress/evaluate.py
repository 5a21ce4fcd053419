"""Evaluation of a model or bundle against a reference: the parity check's own functions.

A torch model is wrapped in :class:`TorchEngine` (the Engine contract's prefill / decode /
reset over a transformers module and its KV cache) so that :func:`edgeslm.verify.run_parity`
measures it exactly as it measures an exported bundle: greedy top-1 agreement and KL
divergence against the reference's greedy continuations of fixed prompts (teacher forced),
and perplexity of a text under both.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..verify.parity import DEFAULT_PROMPTS, PERPLEXITY_TEXT, ParityReport, reference_run, run_parity, source_text_nll


class TorchEngine:
    """prefill/decode/reset over a transformers causal LM (the reference side, or an
    unexported compressed model); logits come back as float32 numpy rows."""

    name = "torch"

    def __init__(self, source):
        self.source = source
        self.module = source.module
        self.spec = source.spec
        params = inspect.signature(self.module.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self.reset()

    def reset(self) -> None:
        self._cache = None
        self.position = 0

    def _run(self, ids: Sequence[int]) -> np.ndarray:
        import torch

        kw = {self._cache_arg: self._cache} if self._cache is not None else {}
        with torch.no_grad():
            out = self.module(torch.tensor([list(ids)]), use_cache=True, **kw)
        cache = getattr(out, "cache", None)
        self._cache = cache if cache is not None else out.past_key_values
        self.position += len(ids)
        return out.logits[0, -1].float().numpy()

    def prefill(self, token_ids: Sequence[int]) -> np.ndarray:
        return self._run(token_ids)

    def decode(self, token_id: int) -> np.ndarray:
        return self._run([int(token_id)])

    def close(self) -> None:
        pass


def open_engine(model, engine_options: dict[str, Any] | None = None):
    """(engine, spec, kind) for a SourceModel, a bundle directory, or a model name/path."""
    from ..bundle import Bundle
    from ..sources import SourceModel

    if isinstance(model, SourceModel):
        return TorchEngine(model), model.spec, "torch"
    if isinstance(model, (str, Path)) and (Path(model) / "manifest.json").is_file():
        from ..plugins import get_engine

        bundle = Bundle.open(model)
        return get_engine(bundle.format)(bundle, **(engine_options or {})), bundle.spec, bundle.format
    from .model import load_model

    src = load_model(model)
    return TorchEngine(src), src.spec, "torch"


@dataclass
class Evaluator:
    """Runs the reference once, then scores any number of candidates against it."""

    reference: Any  # SourceModel
    prompts: Sequence[str] = DEFAULT_PROMPTS
    new_tokens: int = 32
    text: str = PERPLEXITY_TEXT
    max_text_tokens: int = 512

    def __post_init__(self):
        self.refs = reference_run(self.reference, self.prompts, new_tokens=self.new_tokens)
        self.text_ids, self.source_nll = source_text_nll(self.reference, self.text, max_tokens=self.max_text_tokens)

    def score(self, engine) -> ParityReport:
        ctx = getattr(engine, "max_context", None)
        ids, nll = self.text_ids, self.source_nll
        if isinstance(ctx, int) and ctx < len(ids):  # a bundle's context may be shorter than the text
            ids, nll = source_text_nll(self.reference, self.text, max_tokens=ctx)
        return run_parity(engine, self.refs, ids, nll)


def decode_speed(engine, prompt_ids: Sequence[int], tokens: int = 64, repeats: int = 2) -> float:
    """Greedy decode tokens per second after prefilling ``prompt_ids`` (best of ``repeats``)."""
    best = 0.0
    for _ in range(repeats):
        engine.reset()
        tok = int(np.argmax(engine.prefill(prompt_ids)))
        t0 = time.perf_counter()
        for _ in range(tokens):
            tok = int(np.argmax(engine.decode(tok)))
        best = max(best, tokens / (time.perf_counter() - t0))
    engine.reset()
    return best


def evaluate(model, reference, prompts: Sequence[str] = DEFAULT_PROMPTS, new_tokens: int = 32,
             text: str | None = None, max_text_tokens: int = 512, speed_tokens: int = 0,
             engine_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Top-1 agreement, KL (nats/token) and perplexity of ``model`` vs ``reference``.

    ``model``: a SourceModel, a bundle directory, or a model name/path; ``reference``: a
    SourceModel or a model name/path. ``speed_tokens`` > 0 also measures decode tokens/s.
    """
    from .model import load_model

    if not hasattr(reference, "module"):
        reference = load_model(reference)
    ev = Evaluator(reference, prompts, new_tokens, text or PERPLEXITY_TEXT, max_text_tokens)
    engine, spec, kind = open_engine(model, engine_options)
    try:
        if spec.vocab_size != reference.spec.vocab_size:
            from ..errors import EdgeSLMError

            raise EdgeSLMError(f"model and reference vocabularies differ ({spec.vocab_size} vs "
                               f"{reference.spec.vocab_size}); they cannot be compared token by token")
        rep = ev.score(engine)
        out = {"runner": kind, **rep.to_dict()}
        if speed_tokens:
            out["decode_tokens_per_s"] = decode_speed(engine, ev.refs[0].prompt_ids, speed_tokens)
    finally:
        engine.close()
    return out
