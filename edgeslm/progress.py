"""Progress for long steps: a spinner per step on a terminal, plain lines elsewhere (stderr)."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Iterator

from .errors import EdgeSLMError


class Steps:
    """``with steps.step("Exporting to ONNX"): ...`` shows the step, then its duration.

    A spinner runs while the step does (on a terminal); the closing ``✓ title (N s)`` line is
    printed for steps that took ``min_report_s`` or longer, so instant steps (opening a tiny
    bundle) add no lines. A failed step always says so."""

    def __init__(self, enabled: bool = True, stream=None, min_report_s: float = 0.0):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.min_report_s = min_report_s
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        t0 = time.perf_counter()
        if not self.enabled:
            yield
            self.timings[title] = time.perf_counter() - t0
            return
        from rich.console import Console

        console = Console(file=self.stream)
        try:
            with console.status(f"{title} ..."):
                yield
        except EdgeSLMError:
            raise  # the CLI prints it as the one "error: ..." line
        except BaseException:
            console.print(f"[red]✗[/red] {title} (failed after {time.perf_counter() - t0:.1f} s)")
            raise
        dt = time.perf_counter() - t0
        self.timings[title] = dt
        if dt >= self.min_report_s:
            console.print(f"[green]✓[/green] {title} ({dt:.1f} s)")


NULL_STEPS = Steps(enabled=False)
