"""The agreement curve of a training run: quality against the teacher vs CPU-minutes of training.

:class:`Curve` scores the model being trained with the parity check's metrics (greedy top-1
agreement and KL against the teacher's continuations of fixed prompts, perplexity of a held-out
paragraph; see :class:`edgeslm.compress.evaluate.Evaluator`) at step 0, every ``every`` steps and
at the last step. Each point carries the training CPU-minutes spent so far (process CPU time of
the optimizer steps, evaluation and checkpoints excluded) and the tokens trained on. The points go
to a JSON file after every measurement, so an interrupted run keeps what it measured and a resumed
one continues the same curve. :func:`edgeslm.compress.distill.distill` drives it (``curve=``).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..outputs import make_dir


class Curve:
    def __init__(self, evaluator, every: int, path: str | Path | None = None):
        if every < 0:
            raise ValueError("the curve's interval must be >= 0 steps (0: only the first and last step)")
        self.evaluator, self.every = evaluator, every
        self.path = Path(path) if path else None
        self.points: list[dict[str, Any]] = []

    def restore(self, step: int) -> None:
        """Keep the saved points up to ``step`` (a resumed run's checkpoint); later ones are
        measured again, since the run goes on from ``step``."""
        self.points = []
        if step and self.path is not None and self.path.is_file():
            saved = json.loads(self.path.read_text()).get("points", [])
            self.points = [p for p in saved if p["step"] <= step]

    def due(self, step: int, last: int) -> bool:
        if any(p["step"] == step for p in self.points):
            return False
        return step == 0 or step == last or (self.every > 0 and step % self.every == 0)

    def measure(self, step: int, module, spec, cpu_seconds: float, tokens: int) -> dict[str, Any]:
        """Score ``module`` (left in the train/eval mode it was in) and record the point."""
        from .evaluate import TorchEngine

        training = module.training
        module.eval()
        try:
            rep = self.evaluator.score(TorchEngine(SimpleNamespace(module=module, spec=spec)))
        finally:
            module.train(training)
        point = {"step": step, "tokens": tokens, "cpu_seconds": round(cpu_seconds, 2),
                 "cpu_minutes": round(cpu_seconds / 60, 4),
                 "top1_agreement": rep.top1_agreement, "kl_mean": rep.kl_mean,
                 "perplexity": rep.perplexity_export, "perplexity_teacher": rep.perplexity_source,
                 "tokens_compared": rep.tokens}
        self.points.append(point)
        self.save()
        return point

    def save(self) -> None:
        if self.path is not None:
            make_dir(self.path.parent)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"every": self.every, "points": self.points}, indent=2) + "\n")
            tmp.replace(self.path)

    def to_markdown(self) -> str:
        """The curve as a markdown table (empty string without points)."""
        if not self.points:
            return ""
        lines = ["| step | tokens trained | CPU-min (training) | top-1 vs teacher | KL (nats) | perplexity (teacher) |",
                 "|---|---|---|---|---|---|"]
        for p in self.points:
            lines.append(f"| {p['step']} | {p['tokens']:,} | {p['cpu_minutes']:.2f} | {p['top1_agreement']:.1%} "
                         f"| {p['kl_mean']:.3f} | {p['perplexity']:.2f} ({p['perplexity_teacher']:.2f}) |")
        return "\n".join(lines) + "\n"
