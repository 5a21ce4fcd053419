"""Fit forecast: will this model, at this precision and context, fit this device's memory?

Memory needed while generating (all in bytes)::

    weights      = parameters x bytes per weight at the precision (+ quantization scales)
    kv cache     = layers x kv heads x head dim x 2 (K, V) x bytes per value x context tokens
    activations  = bytes per value x ( T x (2 hidden + 2 intermediate + q dim + 2 kv dim)
                                       + 2 x heads x T x context + vocab )
    runtime      = the target's runtime overhead (interpreter, libraries, session, arena slack)

Why this activation formula: runtimes reuse buffers between layers, so one layer's tensors
are alive at a time. With T tokens in one call that is the residual stream and its norm
(2 hidden), the MLP's gate and up projections (2 intermediate), the new Q, K, V, and the
attention scores with their softmax (2 x heads x T x context; unfused attention keeps both);
plus the last token's logits (vocab). T is the prompt length handed to one prefill call:
today's engines take the whole prompt at once, so the forecast assumes the worst case, a
prompt as long as the context (pass ``prefill_tokens`` to model chunked prefill).

On most devices everything lives in RAM and must stay under the target's memory budget (the
weights must also fit its storage). On microcontrollers (``weights_in = "flash"``) the weights
execute in place from flash and only the KV cache, activations and runtime use RAM.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping

from ..errors import DoesNotFitError
from ..spec import ModelSpec
from .precisions import (
    PrecisionCost,
    act_bytes,
    bytes_per_weight,
    kv_cache_bytes,
    weights_bytes,
)
from .profile import TargetProfile
from .units import bytes_and_human, format_bytes


def activation_bytes(spec: ModelSpec, precision: str, context: int, prefill_tokens: int | None = None,
                     compute: str = "", table: Mapping[str, PrecisionCost] | None = None) -> int:
    a = act_bytes(precision, compute, table)
    t = min(prefill_tokens or context, context)
    q_dim = spec.num_heads * spec.head_dim
    kv_dim = spec.num_kv_heads * spec.head_dim
    per_token = 2 * spec.hidden_size + 2 * spec.intermediate_size + q_dim + 2 * kv_dim
    # (batch=1, heads, T, context) scores + softmax, and (1, vocab) logits of the last token
    return a * (t * per_token + 2 * spec.num_heads * t * context + spec.vocab_size)


@dataclass(frozen=True)
class Forecast:
    model: str  # the model's name, for messages
    parameters: int
    target: str
    format: str
    precision: str
    context: int  # tokens of KV cache
    weights: int  # bytes
    kv_cache: int  # bytes
    activations: int  # bytes
    runtime: int  # bytes
    ram_budget: int  # bytes the target allows one model process
    weights_in: str  # "ram" or "flash"
    weights_budget: int  # storage (ram devices) or flash budget (MCUs) the weights must fit

    @property
    def ram_needed(self) -> int:
        weights = self.weights if self.weights_in == "ram" else 0
        return weights + self.kv_cache + self.activations + self.runtime

    @property
    def ram_fits(self) -> bool:
        return self.ram_needed <= self.ram_budget

    @property
    def weights_fit(self) -> bool:
        return self.weights <= self.weights_budget

    @property
    def fits(self) -> bool:
        return self.ram_fits and self.weights_fit

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(ram_needed=self.ram_needed, fits=self.fits, ram_fits=self.ram_fits, weights_fit=self.weights_fit)
        return d

    def why_not(self) -> list[str]:
        """One sentence per exceeded budget, with the exact byte figures."""
        out = []
        if not self.weights_fit:
            where = "flash for weights" if self.weights_in == "flash" else "storage"
            out.append(f"weights {bytes_and_human(self.weights)} exceed the {where} "
                       f"{bytes_and_human(self.weights_budget)} ({self.weights / self.weights_budget:.1f}x)")
        if not self.ram_fits:
            parts = [f"weights {bytes_and_human(self.weights)}"] if self.weights_in == "ram" else []
            parts += [f"KV cache {bytes_and_human(self.kv_cache)}", f"activations {bytes_and_human(self.activations)}",
                      f"runtime {bytes_and_human(self.runtime)}"]
            out.append(f"RAM needed {bytes_and_human(self.ram_needed)} = {' + '.join(parts)} exceeds the budget "
                       f"{bytes_and_human(self.ram_budget)} ({self.ram_needed / self.ram_budget:.1f}x)")
        return out


def forecast(spec: ModelSpec, target: TargetProfile, fmt: str, precision: str, context: int,
             prefill_tokens: int | None = None) -> Forecast:
    """Bytes ``spec`` needs on ``target`` at ``precision`` with a ``context``-token KV cache."""
    mem = target.memory
    support = target.format(fmt)
    compute = support.compute if support else ""
    table = _table(target)
    return Forecast(
        model=spec.name or spec.architecture, parameters=spec.num_parameters, target=target.name, format=fmt,
        precision=precision, context=context, weights=weights_bytes(spec, precision, table),
        kv_cache=kv_cache_bytes(spec, precision, context, compute, table),
        activations=activation_bytes(spec, precision, context, prefill_tokens, compute, table),
        runtime=target.runtime.overhead,
        ram_budget=mem.budget, weights_in=mem.weights_in,
        weights_budget=mem.weights_budget if mem.weights_in == "flash" else mem.storage)


def largest_context(spec: ModelSpec, target: TargetProfile, fmt: str, precision: str,
                    prefill_tokens: int | None = None) -> int:
    """Longest context (<= the model's own) that fits; 0 when not even one token does."""
    def ok(n: int) -> bool:
        return forecast(spec, target, fmt, precision, n, prefill_tokens).fits

    lo, hi = 0, spec.context_length
    if ok(hi):
        return hi
    while lo < hi - 1:  # invariant: ok(lo) or lo == 0; not ok(hi). Memory grows with context.
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo if lo > 0 and ok(lo) else 0


def max_parameters(spec: ModelSpec, target: TargetProfile, precision: str) -> int:
    """Upper bound on the parameters whose weights alone fit next to the runtime."""
    mem = target.memory
    pool = mem.weights_budget if mem.weights_in == "flash" else min(mem.budget - target.runtime.overhead, mem.storage)
    return max(0, int(pool / bytes_per_weight(spec, precision, _table(target))))


def suggestions(spec: ModelSpec, target: TargetProfile, failed: Forecast) -> list[str]:
    """What would fit instead: another precision the target runs, a shorter context, a smaller model."""
    out = []
    for f in target.formats:
        for p in f.precisions:
            if (f.name, p) == (failed.format, failed.precision):
                continue
            if forecast(spec, target, f.name, p, failed.context).fits:
                out.append(f"lower precision: {f.name} {p} fits at context {failed.context} (--precision {p})")
                break
    n = largest_context(spec, target, failed.format, failed.precision)
    if n > 0:
        out.append(f"shorter context: {failed.format} {failed.precision} fits up to {n} tokens (--context-length {n})")
    best = min((p for f in target.formats for p in f.precisions), key=lambda p: bytes_per_weight(spec, p, _table(target)))
    limit = max_parameters(spec, target, best)
    if limit < spec.num_parameters:
        text = (f"a smaller model: at {best}, {target.name} holds at most ~{limit / 1e6:.2f}M parameters "
                f"(this model has {spec.num_parameters / 1e6:.1f}M); distill a micro model of that size and "
                f"export it for {target.formats[0].name}")
        embedding = spec.vocab_size * spec.hidden_size
        if embedding >= limit:
            text += (f"; its {spec.vocab_size:,}-token embedding alone is {embedding / 1e6:.1f}M parameters, so the "
                     f"micro model needs a much smaller vocabulary (e.g. character-level)")
            text += "".join(f"; {h}" for h in _small_model_hints(target))
        out.append(text)
    return out


def _table(target: TargetProfile) -> Mapping[str, PrecisionCost] | None:
    """The precision facts resolved when the target was read; None (core + plugins) for a profile
    built in code without them."""
    return target.precisions or None


def _small_model_hints(target: TargetProfile) -> list[str]:
    """What the installed plugins of the target's formats offer for building a small model."""
    from ..plugins import formats

    info = formats()
    return [info[f.name].small_model_hint for f in target.formats if f.name in info and info[f.name].small_model_hint]


def refuse(spec: ModelSpec, target: TargetProfile, failed: Forecast) -> DoesNotFitError:
    """The error to raise for a forecast that does not fit: figures first, then alternatives."""
    lines = [f"{failed.model} ({failed.parameters / 1e6:.1f}M parameters) does not fit {target.name} as "
             f"{failed.format} {failed.precision} with a {failed.context}-token context:"]
    lines += [f"  - {why}" for why in failed.why_not()]
    alts = suggestions(spec, target, failed)
    if alts:
        lines.append("  what would fit:")
        lines += [f"  - {s}" for s in alts]
    else:
        lines.append("  nothing this target supports would fit this model")
    return DoesNotFitError("\n".join(lines))


def summary_line(f: Forecast) -> str:
    return (f"{f.format} {f.precision} @ {f.context} tokens: needs {format_bytes(f.ram_needed)} RAM of "
            f"{format_bytes(f.ram_budget)}" + ("" if f.weights_in == "ram" else
                                               f", {format_bytes(f.weights)} flash of {format_bytes(f.weights_budget)}"))
