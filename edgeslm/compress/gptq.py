"""Calibrated 4-bit weights (GPTQ, Frantar et al. 2022) vs round-to-nearest, on the int4 grid.

Both produce float weights that lie on the 4-bit grid the ONNX ``int4`` preset uses
(onnxruntime's MatMulNBits: blocks of 32 inputs, asymmetric, ``scale = (max - min) / 15`` over
the block with 0 included, integer zero point), so the result *is* the int4 model, in float:
evaluate it in torch, or chain it like any compressed model. Round-to-nearest rounds each
weight alone. GPTQ quantizes one input column at a time and spreads each column's rounding
error over the columns not yet quantized, weighted by the inverse Hessian ``(X^T X)^-1`` of the
calibration inputs: the output error ``||(W - Q) X||`` is minimized, not the weight error.

An exporter re-quantizes these weights (``edgeslm export -p int4``): it recomputes each block's
min/max and rounds again. Round-to-nearest values survive that unchanged (the block's extremes
map to codes 0 and 15). GPTQ's error updates move weights after the grid is chosen, so a block
could lose its extremes and be re-gridded; GPTQ here therefore *pins* them: the weight that set
a block's minimum (maximum) gets code 0 (15), and its rounding error is spread like any other.
The exported int4 model then holds exactly these weights (tests/compress/test_quantize.py).
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
class QuantizeConfig:
    method: str = "gptq"  # "gptq" | "rtn" (round to nearest)
    bits: int = 4
    group_size: int = 32  # inputs per scale/zero point (MatMulNBits block)
    damp: float = 0.01  # added to the Hessian diagonal, fraction of its mean
    block: int = 128  # GPTQ's lazy-update block (columns)
    targets: tuple[str, ...] = layout.ALL_KINDS
    calibration_tokens: int = 256


def group_params(w, bits: int):
    """Per row of ``w`` (rows, group): scale and integer zero point, onnxruntime's asymmetric rule."""
    import torch

    qmax = 2 ** bits - 1
    lo = torch.clamp(w.min(dim=1).values, max=0.0)
    hi = torch.clamp(w.max(dim=1).values, min=0.0)
    scale = (hi - lo) / qmax
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero = torch.clamp(torch.round(-lo / scale), 0, qmax)
    return scale, zero


def fake_quant(x, scale, zero, bits: int):
    import torch

    return (torch.clamp(torch.round(x / scale) + zero, 0, 2 ** bits - 1) - zero) * scale


def rtn(w, bits: int = 4, group: int = 32):
    """Round-to-nearest of ``w`` (out, in), blockwise along the input."""
    out = w.clone()
    for c in range(0, w.shape[1], group):
        scale, zero = group_params(w[:, c:c + group], bits)
        out[:, c:c + group] = fake_quant(w[:, c:c + group], scale[:, None], zero[:, None], bits)
    return out


def gptq(w, hessian, bits: int = 4, group: int = 32, damp: float = 0.01, block: int = 128):
    """GPTQ of ``w`` (out, in) with ``hessian`` = X^T X (in, in); returns the quantized weights."""
    import torch

    qmax = 2 ** bits - 1
    from .calibration import inverse_hessian_factor

    w, hinv = inverse_hessian_factor(w, hessian, damp)
    q = torch.zeros_like(w)
    cols = w.shape[1]
    scale = zero = None
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1, err1, hb = w[:, i1:i2].clone(), torch.zeros(w.shape[0], i2 - i1), hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            if (i1 + i) % group == 0:  # a new block of the grid: its scale from the updated weights
                scale, zero = group_params(w1[:, i:i + group], bits)
                lo_at = w1[:, i:i + group].argmin(dim=1) + i  # (out,) column holding the block's min
                hi_at = w1[:, i:i + group].argmax(dim=1) + i
            col = w1[:, i]
            qc = fake_quant(col, scale, zero, bits)
            # pin the extremes so the block's grid is what a re-quantizer recomputes
            qc = torch.where((lo_at == i) & (zero > 0), -zero * scale, qc)
            qc = torch.where((hi_at == i) & (zero < qmax), (qmax - zero) * scale, qc)
            q[:, i1 + i] = qc
            e = (col - qc) / hb[i, i]
            w1[:, i:] -= e[:, None] * hb[i, i:][None, :]  # spread the error over later columns
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return q


def quantize_weights(source: SourceModel, config: QuantizeConfig = QuantizeConfig(),
                     calibration_text: str | None = None) -> SourceModel:
    """The model with its decoder linears on the 4-bit grid (GPTQ or round-to-nearest), in float."""
    import torch

    if config.method not in ("gptq", "rtn"):
        raise ValueError(f"method must be 'gptq' or 'rtn', not {config.method!r}")
    t0 = time.process_time()
    stats, tokens = {}, 0
    if config.method == "gptq":
        stats, tokens = input_stats(source, calibration_ids(source, calibration_text, config.calibration_tokens),
                                    config.targets)
    module = copy.deepcopy(source.module)
    with torch.no_grad():
        for name, lin in layout.dense_linears(module, source.spec.description, config.targets):
            if lin.in_features % config.group_size:
                raise ValueError(f"{name}: {lin.in_features} inputs are not a multiple of {config.group_size}")
            w = lin.weight.detach()
            new = gptq(w, stats[name], config.bits, config.group_size, config.damp, config.block) \
                if config.method == "gptq" else rtn(w, config.bits, config.group_size)
            lin.weight.copy_(new)
    step = {"technique": f"int{config.bits}_{config.method}", **asdict(config), "calibration_tokens_seen": tokens,
            "cpu_seconds": round(time.process_time() - t0, 1)}
    return derive(source, module, step)
