"""Calibration statistics: what each decoder linear actually reads, measured on text.

Activation-aware techniques need, per linear layer, the second moment of its inputs over some
calibration tokens: the Gram matrix ``G = X^T X`` (``(in, in)``; whitened low-rank, GPTQ) or
only its diagonal ``sum_t x_tj^2`` (Wanda's input-feature norms). Linears that read the same
tensor (q/k/v; gate/up) share one statistic. Which linears exist comes from the description
(:mod:`.layout`), so fused projections (Phi-3) are measured like separate ones.
"""

from __future__ import annotations

from typing import Sequence

from . import layout


def calibration_ids(source, text: str | None = None, max_tokens: int = 256) -> list[list[int]]:
    """Token windows (each <= 256 tokens) of the calibration text (default: the built-in text,
    which is not the evaluation text), ``max_tokens`` in all."""
    from .data import CALIBRATION_TEXT

    ids = source.tokenizer.encode(CALIBRATION_TEXT if text is None else text)
    while len(ids) < max_tokens and ids:  # short text: repeat it rather than calibrate on less
        ids = ids + ids
    ids = ids[:max_tokens]
    return [ids[i:i + 256] for i in range(0, len(ids), 256)]


def _share_key(name: str) -> str:
    """Linears reading one tensor share a statistic: q/k/v -> '...self_attn.qkv', gate/up -> '...mlp.gu'."""
    parent, k = name.rsplit(".", 1)
    if k in ("q_proj", "k_proj", "v_proj", "qkv_proj"):
        return parent + ".qkv"
    if k in ("gate_proj", "up_proj", "gate_up_proj"):
        return parent + ".gu"
    return name


def input_stats(source, windows: Sequence[Sequence[int]], targets=layout.ALL_KINDS, diag_only: bool = False,
                module=None) -> tuple[dict, int]:
    """({linear name: G (in, in) float64, or its diagonal (in,)}, tokens seen) for the chosen
    dense decoder linears of ``module`` (default: the source's), over the token ``windows``."""
    import torch

    module = source.module if module is None else module
    names = [n for n, _ in layout.dense_linears(module, source.spec.description, targets)]
    stats: dict[str, torch.Tensor] = {}
    hooks = []

    def hook(key):
        def fn(mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()  # (tokens, in)
            s = x.pow(2).sum(0) if diag_only else x.T @ x
            stats[key] = stats[key] + s if key in stats else s
        return fn

    seen_keys = set()
    for n in names:
        key = _share_key(n)
        if key not in seen_keys:  # one hook per shared input
            seen_keys.add(key)
            hooks.append(module.get_submodule(n).register_forward_pre_hook(hook(key)))
    tokens = 0
    try:
        with torch.no_grad():
            for w in windows:
                module(torch.tensor([list(w)]))
                tokens += len(w)
    finally:
        for h in hooks:
            h.remove()
    return {n: stats[_share_key(n)] for n in names}, tokens


def inverse_hessian_factor(w, hessian, damp: float):
    """The shared start of GPTQ and SparseGPT: ``w`` (out, in) as float32 with the columns of
    never-active inputs zeroed, and the upper Cholesky factor of the damped inverse of
    ``hessian`` = X^T X (in, in), computed in float64."""
    import torch

    w = w.clone().float()
    h = hessian.clone().double()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * h.diagonal().mean() * torch.eye(h.shape[0], dtype=h.dtype)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    return w, hinv
