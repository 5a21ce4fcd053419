"""Low-rank factorization: W (out, in) ~= U_r S_r V_r^T, stored as two linears.

The rank of each chosen layer is the smallest that keeps a given fraction of the squared
singular values ("energy"), or the one that leaves a target fraction of the layer's weights.
A layer is factorized only when the two factors are smaller than the dense matrix.

Activation-aware (``whiten=True``, SVD-LLM style): the SVD is taken of ``W S`` where ``S`` is the
Cholesky factor of the calibration inputs' Gram matrix ``X^T X``, so truncating the smallest
singular values removes the least *output* energy ``||(W - W_r) X||`` (plain SVD minimizes
``||W - W_r||``, which ignores which inputs are large); the factors are ``U_r sqrt(s_r)`` and
``sqrt(s_r) V_r^T S^-1``. With ``allocation="global"`` the ranks are chosen across all targeted
matrices at once for a parameter budget (``size_ratio`` of their weights): each singular
component is kept by the fraction of its matrix's output energy it carries per parameter it
costs, so sensitive matrices keep more rank and insensitive ones give more up.

The factorized model is the same transformers model with :class:`~edgeslm.arch.lowrank.LowRankLinear`
in place of the chosen ``nn.Linear`` s; ``spec.extra["low_rank"]`` lists them with their ranks,
and the decoder (:mod:`edgeslm.arch.decoder`) builds the same pairs from it, so every exporter
that goes through ``SourceModel.export_module()`` writes the factorized graph (two MatMuls).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

from ..sources import SourceModel
from . import layout
from .model import LOW_RANK_CONFIG_KEY, derive

GROUPS = layout.GROUPS


@dataclass(frozen=True)
class LowRankConfig:
    energy: float | None = 0.5  # keep this fraction of sum(sigma^2) per layer ...
    size_ratio: float | None = None  # ... or keep this fraction of each layer's weights (overrides)
    targets: tuple[str, ...] = ("mlp",)  # "mlp", "attention", or layer names like "down_proj"
    multiple_of: int = 8  # ranks rounded up to this (SIMD/int4 friendliness)
    whiten: bool = False  # SVD of W @ chol(X^T X) on calibration text (activation-aware)
    allocation: str = "uniform"  # "uniform": each matrix alike | "global": size_ratio over all, by sensitivity
    calibration_tokens: int = 256  # tokens of calibration text (whiten only)
    damp: float = 0.01  # added to the Gram diagonal, as a fraction of its mean (few tokens, wide inputs)


def layer_kinds(targets) -> tuple[str, ...]:
    return layout.kinds(targets)


def choose_rank(singular_values, fan_in: int, fan_out: int, config: LowRankConfig) -> int:
    """Rank for one layer by energy kept or target size, rounded up to ``multiple_of``."""
    import torch

    full = min(fan_in, fan_out)
    if config.size_ratio is not None:
        rank = int(config.size_ratio * fan_in * fan_out / (fan_in + fan_out))
    else:
        e = singular_values.double().pow(2)
        cum = torch.cumsum(e, 0) / e.sum()
        rank = int((cum < config.energy - 1e-12).sum()) + 1
    return _round(rank, full, config.multiple_of)


def _round(rank: int, full: int, multiple_of: int) -> int:
    m = max(1, multiple_of)
    return min(-(-max(rank, 1) // m) * m, full)


def global_ranks(spectra: dict, shapes: dict, size_ratio: float, multiple_of: int = 8) -> dict:
    """Ranks for a parameter budget of ``size_ratio`` x the matrices' weights, chosen across all
    of them: component i of matrix m is worth ``s_mi^2 / sum(s_m^2) / (in_m + out_m)`` (its share
    of the matrix's output energy per parameter); keep every component above one threshold.
    ``spectra``: name -> singular values; ``shapes``: name -> (in, out). A matrix whose rank
    would not save space stays dense (and its weights count in full)."""
    value = {n: (s.double().pow(2) / s.double().pow(2).sum()) / sum(shapes[n]) for n, s in spectra.items()}
    dense = {n: shapes[n][0] * shapes[n][1] for n in spectra}
    budget = size_ratio * sum(dense.values())

    def ranks_at(t: float) -> dict:
        return {n: _round(int((v >= t).sum()), min(shapes[n]), multiple_of) for n, v in value.items()}

    def params(r: dict) -> int:
        return sum(min(r[n] * sum(shapes[n]), dense[n]) for n in r)

    lo, hi = 0.0, float(max(v.max() for v in value.values())) * 2  # params(lo) max, params(hi) min
    for _ in range(60):  # bisection on the threshold: params() falls as t rises
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if params(ranks_at(mid)) > budget else (lo, mid)
    return ranks_at(hi)


def low_rank_factorize(source: SourceModel, config: LowRankConfig = LowRankConfig(),
                       calibration_text: str | None = None) -> SourceModel:
    """Factorize the chosen linear layers; returns a model whose spec lists the ranks."""
    import time

    import torch

    _check(config)
    t0 = time.process_time()
    module = copy.deepcopy(source.module)
    chosen = list(layout.dense_linears(module, source.spec.description, config.targets))
    whitening, tokens = _whitening(source, chosen, config, calibration_text) if config.whiten else ({}, 0)
    planned = _global_plan(chosen, whitening, config) if config.allocation == "global" else {}
    ranks, kept = {}, {}
    with torch.no_grad():
        for name, lin in chosen:
            u, s, vh = _svd(lin, whitening.get(name))
            rank = planned.get(name) or choose_rank(s, lin.in_features, lin.out_features, config)
            if rank * (lin.in_features + lin.out_features) >= lin.in_features * lin.out_features:
                continue  # no saving: keep it dense
            _replace(module, name, _pair(lin, u, s, vh, rank, whitening.get(name)))
            ranks[name] = rank
            kept[name] = float(s[:rank].pow(2).sum() / s.pow(2).sum())
    if not ranks:
        raise ValueError("no layer was factorized (no matching layers, or no rank saves space)")
    setattr(module.config, LOW_RANK_CONFIG_KEY, ranks)
    step = _step_record(config, ranks, kept, tokens, round(time.process_time() - t0, 1))
    out = derive(source, module, step)
    out.spec.extra["energy_kept"] = kept  # whitened: the fraction of each layer's output energy kept
    return out


def _check(config: LowRankConfig) -> None:
    """Refuse a config that names no rank rule, an unknown allocation, or a global one without a budget."""
    if config.size_ratio is None and not (config.energy and 0 < config.energy <= 1):
        raise ValueError("give energy in (0, 1] or a size_ratio")
    if config.allocation not in ("uniform", "global"):
        raise ValueError(f"allocation must be 'uniform' or 'global', not {config.allocation!r}")
    if config.allocation == "global" and config.size_ratio is None:
        raise ValueError("global allocation needs a size_ratio (the fraction of weights to keep)")


def _whitening(source: SourceModel, chosen: list, config: LowRankConfig,
               calibration_text: str | None) -> tuple[dict, int]:
    """(layer name -> lower Cholesky factor S of its inputs' damped mean Gram matrix, tokens seen).
    Layers that read the same input (q/k/v, gate/up) share one Gram matrix and so one factor."""
    import torch

    from .calibration import calibration_ids, input_stats

    grams, tokens = input_stats(source, calibration_ids(source, calibration_text, config.calibration_tokens),
                                config.targets)
    factors, whitening = {}, {}
    for name, _ in chosen:
        g = grams[name]
        key = id(g)
        if key not in factors:
            g = g / max(tokens, 1)
            g = g + config.damp * g.diagonal().mean() * torch.eye(g.shape[0], dtype=g.dtype)
            factors[key] = torch.linalg.cholesky(g)  # (in, in) lower: g = S S^T
        whitening[name] = factors[key]
    return whitening, tokens


def _whitened(lin, s_mat):
    """The matrix whose SVD is truncated: W, or W S when whitened (W X = (W S)(S^-1 X))."""
    w = lin.weight.double()  # (out, in)
    return w @ s_mat if s_mat is not None else w  # (out, in)


def _svd(lin, s_mat):
    """U, s, V^T of the (whitened) weight, thin."""
    import torch

    return torch.linalg.svd(_whitened(lin, s_mat), full_matrices=False)  # (out, k), (k,), (k, in)


def _global_plan(chosen: list, whitening: dict, config: LowRankConfig) -> dict:
    """Ranks for allocation="global": :func:`global_ranks` over every chosen matrix's spectrum."""
    import torch

    with torch.no_grad():
        spectra = {n: torch.linalg.svdvals(_whitened(lin, whitening.get(n))) for n, lin in chosen}
    shapes = {n: (lin.in_features, lin.out_features) for n, lin in chosen}
    return global_ranks(spectra, shapes, config.size_ratio, config.multiple_of)


def _pair(lin, u, s, vh, rank: int, s_mat):
    """The LowRankLinear of ``lin`` truncated at ``rank``: up = U_r sqrt(s_r), down = sqrt(s_r) V_r^T
    (times S^-1 when whitened), the bias on ``up``."""
    import torch

    from ..arch.lowrank import LowRankLinear

    root = s[:rank].sqrt()
    down = root[:, None] * vh[:rank]  # (rank, in), in whitened coordinates
    if s_mat is not None:  # back to input coordinates: down @ S^-1
        down = torch.linalg.solve_triangular(s_mat, down, upper=False, left=False)
    pair = LowRankLinear(lin.in_features, lin.out_features, rank, bias=lin.bias is not None)
    pair.down.weight.copy_(down.float())  # (rank, in)
    pair.up.weight.copy_((u[:, :rank] * root[None, :]).float())  # (out, rank)
    if lin.bias is not None:
        pair.up.bias.copy_(lin.bias)
    return pair


def _step_record(config: LowRankConfig, ranks: dict, kept: dict, tokens: int, cpu_seconds: float) -> dict:
    """The compression step recorded in the spec: the config, the ranks' range and the energy kept."""
    energies = list(kept.values())
    return {"technique": "low_rank", **asdict(config), "layers": len(ranks),
            "rank_min": min(ranks.values()), "rank_max": max(ranks.values()),
            "energy_kept_mean": sum(energies) / len(energies), "energy_kept_min": min(energies),
            "calibration_tokens_seen": tokens, "cpu_seconds": cpu_seconds}


def _replace(module, name: str, new) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(module.get_submodule(parent_name), attr, new)
