"""`edgeslm bench`: how fast a bundle runs here — prefill, decode, time to first token, memory.

Each run: reset, prefill a fixed prompt of ``prompt_tokens`` tokens, then greedily decode
exactly ``new_tokens`` tokens (EOS ignored) through the shared Generator, so the numbers are
what an application sees. The Generator also times its calls into the engine, which gives its
own per-token overhead.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

BENCH_TEXT = (
    "Edge devices run small language models close to their users: a Raspberry Pi in a workshop, "
    "a Jetson in a robot, a phone in a pocket. Latency, memory and power decide what fits. "
)


@dataclass
class BenchConfig:
    prompt_tokens: int = 128  # prefill length
    new_tokens: int = 64  # decoded tokens per run (EOS ignored)
    runs: int = 5  # measured runs
    warmup: int = 1  # unmeasured runs first (allocations, kernel selection)
    threads: int | None = None  # engine threads; None = runtime's default

    def __post_init__(self):
        from .errors import GenerationError

        if self.runs < 1 or self.warmup < 0 or self.prompt_tokens < 1 or self.new_tokens < 1:
            raise GenerationError(f"bench needs runs >= 1, warmup >= 0, prompt_tokens >= 1 and new_tokens >= 1 "
                                  f"(got {self.runs}, {self.warmup}, {self.prompt_tokens}, {self.new_tokens})")


@dataclass
class Stat:
    min: float
    median: float
    max: float

    @classmethod
    def of(cls, xs: list[float]) -> "Stat":
        return cls(min(xs), statistics.median(xs), max(xs))


@dataclass
class BenchResult:
    bundle: str
    format: str
    precision: str
    bundle_bytes: int
    threads: int | None
    prompt_tokens: int
    new_tokens: int
    runs: int
    prefill_tokens_per_s: Stat
    decode_tokens_per_s: Stat
    time_to_first_token_s: Stat
    generator_overhead: Stat  # share of the decode loop spent outside Engine.decode
    peak_rss_bytes: int
    machine: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prompt_ids(tokenizer, n: int) -> list[int]:
    """A deterministic prompt of exactly ``n`` tokens."""
    ids: list[int] = []
    while len(ids) < n:
        ids += tokenizer.encode(BENCH_TEXT)
    return ids[:n]


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "system": platform.system()}


def bench_model(model, config: BenchConfig, on_run: Callable[[int], None] | None = None) -> BenchResult:
    """Benchmark an opened :class:`~edgeslm.runtime.model.LoadedModel`."""
    ids = prompt_ids(model.tokenizer, config.prompt_tokens)
    if config.prompt_tokens + config.new_tokens > model.engine.max_context:
        from .errors import GenerationError

        raise GenerationError(f"prompt {config.prompt_tokens} + new {config.new_tokens} tokens exceed the bundle's "
                              f"context {model.engine.max_context}")
    prefill, decode, ttft, overhead = [], [], [], []
    for i in range(config.warmup + config.runs):
        model.generator.forget_cache()  # every run prefills the whole prompt: same prompt, no reuse
        r = model.generate(ids, max_new_tokens=config.new_tokens, stop_on_eos=False)
        if i >= config.warmup:
            m = r.metrics
            prefill.append(m.prefill_tokens_per_s)
            decode.append(m.decode_tokens_per_s)
            ttft.append(m.time_to_first_token_s)
            overhead.append(m.generator_overhead)
        if on_run:
            on_run(i)
    b = model.bundle
    return BenchResult(
        bundle=str(b.path), format=b.format, precision=b.manifest.get("precision", "?"), bundle_bytes=b.bytes,
        threads=config.threads, prompt_tokens=config.prompt_tokens, new_tokens=config.new_tokens, runs=config.runs,
        prefill_tokens_per_s=Stat.of(prefill), decode_tokens_per_s=Stat.of(decode),
        time_to_first_token_s=Stat.of(ttft), generator_overhead=Stat.of(overhead),
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, machine=machine_info())


def bench_bundle(path: str | Path, config: BenchConfig | None = None,
                 on_run: Callable[[int], None] | None = None) -> BenchResult:
    import edgeslm

    config = config or BenchConfig()
    options = {"threads": config.threads} if config.threads else {}
    with edgeslm.load(path, engine_options=options) as model:
        return bench_model(model, config, on_run)
