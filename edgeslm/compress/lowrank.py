"""Low-rank factorization: W (out, in) ~= U_r S_r V_r^T, stored as two linears.

The rank of each chosen layer is the smallest that keeps a given fraction of the squared
singular values ("energy"), or the one that leaves a target fraction of the layer's weights.
A layer is factorized only when the two factors are smaller than the dense matrix.

The factorized model is the same transformers model with :class:`~edgeslm.arch.lowrank.LowRankLinear`
in place of the chosen ``nn.Linear`` s; ``spec.extra["low_rank"]`` lists them with their ranks,
and the decoder (:mod:`edgeslm.arch.decoder`) builds the same pairs from it, so every exporter
that goes through ``SourceModel.export_module()`` writes the factorized graph (two MatMuls).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

from ..sources import SourceModel
from .model import LOW_RANK_CONFIG_KEY, derive

GROUPS = {"mlp": ("gate_proj", "up_proj", "down_proj"), "attention": ("q_proj", "k_proj", "v_proj", "o_proj")}


@dataclass(frozen=True)
class LowRankConfig:
    energy: float | None = 0.5  # keep this fraction of sum(sigma^2) per layer ...
    size_ratio: float | None = None  # ... or keep this fraction of each layer's weights (overrides)
    targets: tuple[str, ...] = ("mlp",)  # "mlp", "attention", or layer names like "down_proj"
    multiple_of: int = 8  # ranks rounded up to this (SIMD/int4 friendliness)


def layer_kinds(targets) -> tuple[str, ...]:
    kinds = []
    for t in targets:
        kinds += GROUPS.get(t, (t,))
    return tuple(kinds)


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
    m = max(1, config.multiple_of)
    rank = -(-max(rank, 1) // m) * m
    return min(rank, full)


def low_rank_factorize(source: SourceModel, config: LowRankConfig = LowRankConfig()) -> SourceModel:
    """Factorize the chosen linear layers; returns a model whose spec lists the ranks."""
    import torch

    from ..arch.lowrank import LowRankLinear

    if config.size_ratio is None and not (config.energy and 0 < config.energy <= 1):
        raise ValueError("give energy in (0, 1] or a size_ratio")
    module = copy.deepcopy(source.module)
    kinds = layer_kinds(config.targets)
    ranks, kept, report = {}, {}, []
    with torch.no_grad():
        for name, lin in list(module.named_modules()):
            if name.rsplit(".", 1)[-1] not in kinds or not isinstance(lin, torch.nn.Linear) or ".layers." not in name:
                continue
            w = lin.weight.double()  # (out, in)
            u, s, vh = torch.linalg.svd(w, full_matrices=False)  # (out, k), (k,), (k, in)
            rank = choose_rank(s, lin.in_features, lin.out_features, config)
            if rank * (lin.in_features + lin.out_features) >= lin.in_features * lin.out_features:
                continue  # no saving: keep it dense
            root = s[:rank].sqrt()
            pair = LowRankLinear(lin.in_features, lin.out_features, rank, bias=lin.bias is not None)
            pair.down.weight.copy_((root[:, None] * vh[:rank]).float())  # (rank, in)
            pair.up.weight.copy_((u[:, :rank] * root[None, :]).float())  # (out, rank)
            if lin.bias is not None:
                pair.up.bias.copy_(lin.bias)
            parent_name, _, attr = name.rpartition(".")
            setattr(module.get_submodule(parent_name), attr, pair)
            ranks[name] = rank
            kept[name] = float(s[:rank].pow(2).sum() / s.pow(2).sum())
    if not ranks:
        raise ValueError("no layer was factorized (no matching layers, or no rank saves space)")
    setattr(module.config, LOW_RANK_CONFIG_KEY, ranks)
    energies = list(kept.values())
    step = {"technique": "low_rank", **asdict(config), "layers": len(ranks),
            "rank_min": min(ranks.values()), "rank_max": max(ranks.values()),
            "energy_kept_mean": sum(energies) / len(energies), "energy_kept_min": min(energies)}
    out = derive(source, module, step)
    out.spec.extra["energy_kept"] = kept
    return out
