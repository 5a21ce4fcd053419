"""The health check a device runs on a new bundle before it keeps it.

1. **Parity smoke test, on the device's own engine**: for each reference prompt of the command
   (token ids and the reference model's greedy continuation, made by the controller from a
   reference bundle with :func:`make_reference`), prefill the prompt and decode the reference
   tokens one by one (teacher forcing, as the export's parity check does); the share of steps
   whose top-1 token equals the reference must reach ``min_top1_agreement``. This catches a
   bundle that loads but answers differently: a broken quantization, a runtime whose kernels
   differ on this hardware, a model that is not the one intended.
2. **Speed against the previous bundle**: TTFT and decode tokens/s of a few generations on the
   new bundle, against the previous bundle's recent telemetry on this device (or, with too
   few recent requests, the same generations on the previous bundle before the swap), with the
   command's ratios (and absolute limits when given).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .command import Health

SPEED_RUNS = 3  # generations per speed measurement
SPEED_TOKENS = 8


@dataclass
class Speed:
    ttft_s: float
    tok_s: float
    samples: int

    def to_dict(self) -> dict[str, float]:
        return {"ttft_s": round(self.ttft_s, 6), "tok_s": round(self.tok_s, 3), "samples": self.samples}


@dataclass
class Verdict:
    ok: bool
    reason: str = ""  # one line when not ok
    details: dict[str, Any] = field(default_factory=dict)


def make_reference(model: Any, prompts: Sequence[str], tokens: int = 16) -> list[dict[str, list[int]]]:
    """Greedy continuations of ``prompts`` by ``model`` (a LoadedModel): the smoke test's reference."""
    engine, out = model.engine, []
    for text in prompts:
        ids = list(model.tokenizer.encode(text))[: max(1, model.spec.context_length - tokens - 1)]
        engine.reset()
        logits = engine.prefill(ids)
        cont = []
        for _ in range(tokens):
            tok = int(np.argmax(logits))
            cont.append(tok)
            logits = engine.decode(tok)
        engine.reset()
        out.append({"ids": ids, "continuation": cont})
    return out


def smoke(model: Any, reference: list[dict[str, list[int]]]) -> tuple[float, int]:
    """(top-1 agreement, steps compared) of ``model``'s engine, teacher-forced on ``reference``."""
    engine = model.engine
    vocab = model.spec.vocab_size
    agree = total = 0
    for ref in reference:
        ids, cont = ref["ids"], ref["continuation"]
        if max(ids + cont) >= vocab:
            return 0.0, max(1, total)  # the reference is in another vocabulary: certainly not the same model
        engine.reset()
        logits = engine.prefill(ids)
        for i, tok in enumerate(cont):
            agree += int(np.argmax(logits)) == tok
            total += 1
            if i + 1 < len(cont):
                logits = engine.decode(tok)
        engine.reset()
    return (agree / total if total else 1.0), total


def measure(model: Any, reference: list[dict[str, list[int]]], runs: int = SPEED_RUNS) -> Speed | None:
    """Median TTFT and decode tok/s of ``runs`` short greedy generations through the model's Generator."""
    prompts = [r["ids"] for r in reference] or [[0, 1, 2, 3]]
    ttft, rate = [], []
    for i in range(runs):
        res = model.generate(list(prompts[i % len(prompts)]), max_new_tokens=SPEED_TOKENS, temperature=0.0)
        m = res.metrics
        ttft.append(m.time_to_first_token_s)
        if m.decode_tokens_per_s > 0:
            rate.append(m.decode_tokens_per_s)
    if not ttft:
        return None
    return Speed(statistics.median(ttft), statistics.median(rate) if rate else 0.0, len(ttft))


def judge(h: Health, agreement: float, steps: int, new: Speed | None, base: Speed | None) -> Verdict:
    """Apply the command's thresholds; the details go into the device's event."""
    d: dict[str, Any] = {"top1_agreement": round(agreement, 4), "smoke_steps": steps,
                         "min_top1_agreement": h.min_top1_agreement}
    if new is not None:
        d["new"] = new.to_dict()
    if base is not None:
        d["previous"] = base.to_dict()
    if steps and agreement < h.min_top1_agreement:
        return Verdict(False, f"smoke test: top-1 agreement {agreement:.2f} with the reference is below "
                              f"{h.min_top1_agreement:.2f}", d)
    if new is not None:
        if h.max_ttft_s is not None and new.ttft_s > h.max_ttft_s:
            return Verdict(False, f"TTFT {new.ttft_s * 1e3:.1f} ms is over the limit {h.max_ttft_s * 1e3:.1f} ms", d)
        if h.min_tok_s is not None and new.tok_s < h.min_tok_s:
            return Verdict(False, f"decode {new.tok_s:.1f} tok/s is under the limit {h.min_tok_s:.1f}", d)
        if base is not None and h.max_ttft_ratio is not None and base.ttft_s > 0 \
                and new.ttft_s > h.max_ttft_ratio * base.ttft_s:
            return Verdict(False, f"TTFT {new.ttft_s * 1e3:.1f} ms is over {h.max_ttft_ratio:g}x the previous "
                                  f"bundle's {base.ttft_s * 1e3:.1f} ms", d)
        if base is not None and h.min_tok_s_ratio is not None and base.tok_s > 0 \
                and new.tok_s < h.min_tok_s_ratio * base.tok_s:
            return Verdict(False, f"decode {new.tok_s:.1f} tok/s is under {h.min_tok_s_ratio:g}x the previous "
                                  f"bundle's {base.tok_s:.1f}", d)
    return Verdict(True, "", d)


class RecentSpeed:
    """The device's recent TTFT / tok/s per bundle (fed by every generation the agent records)."""

    def __init__(self, keep: int = 50):
        self.keep = keep
        self._by_bundle: dict[str, list[tuple[float, float]]] = {}

    def observe(self, bundle: str, result: Any) -> None:
        m = getattr(result, "metrics", None)
        if m is None or not bundle:
            return
        rows = self._by_bundle.setdefault(bundle, [])
        rows.append((m.time_to_first_token_s, m.decode_tokens_per_s))
        del rows[:-self.keep]

    def speed(self, bundle: str, min_samples: int = 5) -> Speed | None:
        rows = self._by_bundle.get(bundle) or []
        if len(rows) < min_samples:
            return None
        rates = [r for _, r in rows if r > 0]
        return Speed(statistics.median(t for t, _ in rows), statistics.median(rates) if rates else 0.0, len(rows))
