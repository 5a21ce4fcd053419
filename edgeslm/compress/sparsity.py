"""Activation-aware sparsity (Wanda, Sun et al. 2023): unstructured or N:M (2:4) zeros.

A weight's importance is ``|W_ij| * ||X_j||_2``: its magnitude times the norm of the input
feature it multiplies, measured on calibration text. Each output row loses its least important
``sparsity`` fraction (unstructured), or, for N:M, every group of M consecutive inputs keeps its
N most important weights (2:4 is what sparse tensor cores and some NPUs accelerate). No weight
update and no retraining: one forward pass over the calibration tokens. Magnitude pruning
(:mod:`.prune`) is the same without the activation factor. Shapes do not change.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

from ..sources import SourceModel
from . import layout
from .calibration import calibration_ids, input_stats
from .model import derive


@dataclass(frozen=True)
class SparsityConfig:
    sparsity: float = 0.5  # fraction of each row's weights zeroed (unstructured; N:M implies 1 - N/M)
    pattern: str = "unstructured"  # "unstructured" | "N:M", e.g. "2:4"
    targets: tuple[str, ...] = layout.ALL_KINDS  # decoder linears (embedding / lm_head stay dense)


def _nm(pattern: str) -> tuple[int, int] | None:
    if pattern == "unstructured":
        return None
    try:
        n, m = (int(v) for v in pattern.split(":"))
    except ValueError:
        raise ValueError(f"pattern must be 'unstructured' or 'N:M' (e.g. '2:4'), not {pattern!r}") from None
    if not 0 < n < m:
        raise ValueError(f"N:M needs 0 < N < M, not {pattern!r}")
    return n, m


def wanda_mask(weight, feature_sq, sparsity: float, nm: tuple[int, int] | None = None):
    """Keep-mask (bool, like ``weight`` (out, in)) from scores ``|W| * sqrt(feature_sq)`` (in,)."""
    import torch

    score = weight.abs() * feature_sq.float().sqrt()[None, :]  # (out, in)
    out, fan_in = score.shape
    if nm is not None:
        n, m = nm
        if fan_in % m:
            raise ValueError(f"{m} does not divide the input width {fan_in}")
        groups = score.view(out, fan_in // m, m)  # (out, groups, m)
        drop = groups.topk(m - n, dim=-1, largest=False).indices
        mask = torch.ones_like(groups, dtype=torch.bool).scatter_(-1, drop, False)
        return mask.view(out, fan_in)
    k = int(fan_in * sparsity)
    mask = torch.ones_like(score, dtype=torch.bool)
    if k:
        mask.scatter_(1, score.topk(k, dim=1, largest=False).indices, False)  # per output row
    return mask


def activation_sparsify(source: SourceModel, config: SparsityConfig = SparsityConfig(),
                        calibration_text: str | None = None, calibration_tokens: int = 256) -> SourceModel:
    """Zero weights by the Wanda criterion on ``calibration_text`` (default: built-in text)."""
    import torch

    nm = _nm(config.pattern)
    if nm is None and not 0.0 <= config.sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), not {config.sparsity}")
    t0 = time.process_time()
    windows = calibration_ids(source, calibration_text, calibration_tokens)
    stats, tokens = input_stats(source, windows, config.targets, diag_only=True)
    module = copy.deepcopy(source.module)
    zeroed = total = 0
    with torch.no_grad():
        for name, lin in layout.dense_linears(module, source.spec.description, config.targets):
            mask = wanda_mask(lin.weight, stats[name], config.sparsity, nm)
            lin.weight.mul_(mask)
            zeroed += int((~mask).sum())
            total += mask.numel()
    step = {"technique": "wanda", **asdict(config), "calibration_tokens": tokens,
            "sparsity_achieved": zeroed / max(total, 1), "cpu_seconds": round(time.process_time() - t0, 1)}
    return derive(source, module, step)
