"""Per-interval aggregation of finished generations into the v1 ``metrics`` object.

One telemetry message per interval instead of one per request keeps a 1,000-device fleet at
a few hundred messages per second whatever the request rate, and percentiles (p50/p95/max)
keep the tail that averages hide.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from . import schema


@dataclass
class _Window:
    durations: list[float] = field(default_factory=list)  # seconds, whole request
    ttft: list[float] = field(default_factory=list)  # seconds
    tpot: list[float] = field(default_factory=list)  # seconds per decode step
    decode_rate: list[float] = field(default_factory=list)  # tokens/s
    input_tokens: int = 0
    output_tokens: int = 0
    errors: Counter = field(default_factory=Counter)  # error.type -> count


class IntervalAggregator:
    """Collects GenerationResults (thread-safe) and hands out one metrics dict per interval."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._w = _Window()

    def record(self, result: Any) -> None:
        """Add one finished generation (anything with a ``.metrics`` GenerationMetrics)."""
        m = result.metrics
        with self._lock:
            w = self._w
            w.durations.append(float(m.total_s))
            w.ttft.append(float(m.time_to_first_token_s))
            if m.output_tokens > 1:
                w.tpot.append(float(m.time_per_output_token_s))
                w.decode_rate.append(float(m.decode_tokens_per_s))
            w.input_tokens += int(m.prompt_tokens)
            w.output_tokens += int(m.output_tokens)

    def record_error(self, error_type: str) -> None:
        """Count one failed request under its ``error.type`` (an exception class name)."""
        with self._lock:
            self._w.errors[error_type] += 1

    def take(self) -> dict[str, Any]:
        """The metrics of the interval so far, and start a new interval."""
        with self._lock:
            w, self._w = self._w, _Window()
        return {
            schema.REQUEST_DURATION: schema.summarize(w.durations),
            schema.TTFT: schema.summarize(w.ttft),
            schema.TPOT: schema.summarize(w.tpot),
            schema.DECODE_RATE: schema.summarize(w.decode_rate),
            schema.TOKEN_USAGE: {"input": w.input_tokens, "output": w.output_tokens},
            schema.ERRORS: {"total": sum(w.errors.values()), "by_type": dict(w.errors)},
        }
