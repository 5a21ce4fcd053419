"""Activation-aware sparsity: unstructured or N:M (2:4) zeros by Wanda or SparseGPT.

A weight's importance is ``|W_ij| * ||X_j||_2``: its magnitude times the norm of the input
feature it multiplies, measured on calibration text. Each output row loses its least important
``sparsity`` fraction (unstructured), or, for N:M, every group of M consecutive inputs keeps its
N most important weights (2:4 is what sparse tensor cores and some NPUs accelerate). No weight
update and no retraining: one forward pass over the calibration tokens. Magnitude pruning
(:mod:`.prune`) is the same without the activation factor. Shapes do not change.

SparseGPT (Frantar & Alistarh 2023, ``method="sparsegpt"``) is GPTQ's loop with zeros for a
grid: columns are pruned left to right (the mask chosen per block of 128 columns by
``w^2 / [H^-1]_jj^2``) and each pruned weight's error is compensated by updating the columns
not yet visited, through the inverse Hessian of the calibration inputs. It needs many more
calibration tokens than Wanda: its Hessian ``X^T X`` is (in, in), and with fewer distinct tokens
than the widest input (1536 for SmolLM2's down_proj) it is mostly damping and SparseGPT fits the
calibration text (measured: 512 tokens 37.5% top-1, 4096 tokens 47.9%; docs/compression.md).

Per-layer ratios (``layerwise="owl"``, OWL: Yin et al. 2024, "Outlier Weighed Layerwise
Sparsity"): layers differ in how many *outlier* weights they hold (Wanda scores above ``owl_m``
times the layer's mean score), and those layers lose more when pruned alike. OWL gives each
decoder layer its own sparsity, lower where the outlier share is higher, linear in the share,
within ``sparsity +- owl_lambda`` and with the (size-weighted) mean at ``sparsity``, so the
model's overall sparsity is the target. Unstructured only: N:M is one pattern in every layer.
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
    method: str = "wanda"  # "wanda" (mask only) | "sparsegpt" (mask + second-order weight update)
    layerwise: str = "uniform"  # "uniform": every layer at `sparsity` | "owl": per-layer by outlier share
    owl_lambda: float = 0.08  # owl: each layer's sparsity stays within sparsity +- owl_lambda
    owl_m: float = 5.0  # owl: an outlier is a Wanda score above owl_m x its layer's mean score


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


def sparsegpt(w, hessian, sparsity: float, nm: tuple[int, int] | None = None, damp: float = 0.01,
              block: int = 128):
    """SparseGPT of ``w`` (out, in) with ``hessian`` = X^T X (in, in); returns the pruned,
    compensated weights."""
    import torch

    from .calibration import inverse_hessian_factor

    w, hinv = inverse_hessian_factor(w, hessian, damp)
    cols = w.shape[1]
    if nm is not None and block % nm[1]:
        block = nm[1] * max(1, block // nm[1])
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1, err1, hb = w[:, i1:i2].clone(), torch.zeros(w.shape[0], i2 - i1), hinv[i1:i2, i1:i2]
        d = hb.diagonal()
        if nm is None:  # the block's mask at once: lowest w^2 / d^2 over the whole block
            score = w1.pow(2) / d[None, :].pow(2)
            k = int(score.numel() * sparsity)
            mask = torch.zeros_like(w1, dtype=torch.bool)
            if k:
                mask.view(-1)[score.view(-1).topk(k, largest=False).indices] = True  # True = pruned
        else:
            mask = torch.zeros_like(w1, dtype=torch.bool)
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                score = w1[:, i:i + nm[1]].pow(2) / d[i:i + nm[1]][None, :].pow(2)
                mask.scatter_(1, i + score.topk(nm[1] - nm[0], dim=1, largest=False).indices, True)
            col = w1[:, i]
            q = torch.where(mask[:, i], torch.zeros_like(col), col)
            e = (col - q) / hb[i, i]
            w1[:, i:] -= e[:, None] * hb[i, i:][None, :]
            w1[:, i] = q
            err1[:, i] = e
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w


def _check(config: SparsityConfig) -> tuple[int, int] | None:
    """The N:M pair (None: unstructured) of a valid config; ValueError naming the bad option."""
    nm = _nm(config.pattern)
    if nm is None and not 0.0 <= config.sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), not {config.sparsity}")
    if config.method not in ("wanda", "sparsegpt"):
        raise ValueError(f"method must be 'wanda' or 'sparsegpt', not {config.method!r}")
    if config.layerwise not in ("uniform", "owl"):
        raise ValueError(f"layerwise must be 'uniform' or 'owl', not {config.layerwise!r}")
    if config.layerwise == "owl":
        if nm is not None:
            raise ValueError(f"layerwise='owl' is for unstructured sparsity; {config.pattern} keeps "
                             f"{nm[0]} of every {nm[1]} weights in every layer by definition")
        lam = config.owl_lambda
        if not (lam > 0 and config.sparsity - lam >= 0 and config.sparsity + lam < 1):
            raise ValueError(f"owl_lambda must be > 0 with sparsity +- owl_lambda inside [0, 1); "
                             f"{config.sparsity} +- {lam} is not")
        if not config.owl_m > 0:
            raise ValueError(f"owl_m (outlier threshold, x the layer's mean score) must be > 0, not {config.owl_m}")
    return nm


def _layer(name: str) -> int:
    """``model.layers.3.mlp.down_proj`` -> 3."""
    return int(name.split(".")[2])


def outlier_shares(module, desc, stats: dict, targets, m: float) -> tuple[dict[int, float], dict[int, int]]:
    """Per decoder layer: the fraction of its Wanda scores ``|W_ij| * ||X_j||`` (all its targeted
    linears together) above ``m`` x their mean (OWL's layerwise outlier distribution), and the
    layer's number of weights. ``stats``: input_stats' Gram matrices or their diagonals."""
    import torch

    scores: dict[int, list] = {}
    for name, lin in layout.dense_linears(module, desc, targets):
        feat = stats[name].diagonal() if stats[name].dim() == 2 else stats[name]
        scores.setdefault(_layer(name), []).append((lin.weight.detach().abs() * feat.float().sqrt()[None, :]).flatten())
    shares, sizes = {}, {}
    for i, parts in scores.items():
        s = torch.cat(parts)
        shares[i], sizes[i] = float((s > m * s.mean()).double().mean()), s.numel()
    return shares, sizes


def owl_ratios(shares: dict[int, float], sizes: dict[int, int], target: float, lam: float) -> dict[int, float]:
    """Per-layer sparsity: ``target`` minus the layer's outlier share's deviation from the
    size-weighted mean share, scaled so the farthest layer sits exactly ``lam`` away. The
    size-weighted mean ratio is then ``target`` (the overall sparsity), every ratio is within
    ``target +- lam``, and more outliers mean fewer zeros. (The paper maps the shares linearly
    onto a spread of 2 lam and re-centres on the mean, which can put a layer up to 2 lam away
    when the shares are skewed; same ranking, same mean, this one keeps the bound.)"""
    total = sum(sizes.values())
    mean = sum(shares[i] * sizes[i] for i in shares) / total
    far = max(abs(shares[i] - mean) for i in shares)
    if far == 0:  # every layer alike: uniform
        return {i: target for i in shares}
    return {i: target - lam * (shares[i] - mean) / far for i in shares}


def activation_sparsify(source: SourceModel, config: SparsityConfig = SparsityConfig(),
                        calibration_text: str | None = None, calibration_tokens: int = 256) -> SourceModel:
    """Zero weights by the Wanda criterion (or SparseGPT) on ``calibration_text`` (default:
    built-in text, ~100 tokens, repeated up to ``calibration_tokens``: SparseGPT wants thousands
    of tokens of real text), every layer at ``config.sparsity`` or at OWL's per-layer ratios."""
    import torch

    nm = _check(config)
    t0 = time.process_time()
    windows = calibration_ids(source, calibration_text, calibration_tokens)
    stats, tokens = input_stats(source, windows, config.targets, diag_only=config.method == "wanda")
    module = copy.deepcopy(source.module)
    desc = source.spec.description
    ratios, shares = {}, {}
    if config.layerwise == "owl":
        shares, sizes = outlier_shares(module, desc, stats, config.targets, config.owl_m)
        ratios = owl_ratios(shares, sizes, config.sparsity, config.owl_lambda)
    zeroed = total = 0
    with torch.no_grad():
        for name, lin in layout.dense_linears(module, desc, config.targets):
            ratio = ratios.get(_layer(name), config.sparsity)
            if config.method == "sparsegpt":
                lin.weight.copy_(sparsegpt(lin.weight.detach(), stats[name], ratio, nm))
                mask = lin.weight != 0
            else:
                mask = wanda_mask(lin.weight, stats[name], ratio, nm)
                lin.weight.mul_(mask)
            zeroed += int((~mask).sum())
            total += mask.numel()
    step = {"technique": config.method, **asdict(config), "calibration_tokens": tokens,
            "sparsity_achieved": zeroed / max(total, 1), "cpu_seconds": round(time.process_time() - t0, 1)}
    if config.layerwise == "owl":
        step["layer_sparsity"] = [round(ratios[i], 4) for i in sorted(ratios)]
        step["layer_outlier_share"] = [round(shares[i], 5) for i in sorted(shares)]
    return derive(source, module, step)
