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

``grid="minmax"`` uses Q4_1's grid instead (``scale = (max - min) / 15``, the float minimum at
code 0; no zero forced into range), which ``edgeslm export -p int4-minmax`` (ONNX) stores
exactly; weights that already lie on it (a dequantized Q4_1 GGUF) come back unchanged.
``act_order=True``: GPTQ visits columns by decreasing ``diag(X^T X)``, every block's grid fixed
from the original weights first (blocks stay contiguous, as the exporters store them).
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
    # "onnx": MatMulNBits' grid (0 in range, integer zero point; export -p int4);
    # "minmax": Q4_1's grid (scale (max-min)/15, float minimum; export -p int4-minmax)
    grid: str = "onnx"
    act_order: bool = False  # GPTQ: columns by decreasing Hessian diagonal (grids fixed up front)


GRIDS = ("onnx", "minmax")


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


def minmax_params(w, bits: int):
    """Per row of ``w`` (rows, group): Q4_1's grid, ``scale = (max - min) / qmax`` and the float
    minimum (code 0); a constant row gets scale 0 (every weight is its minimum)."""
    qmax = 2 ** bits - 1
    lo = w.min(dim=1).values
    return (w.max(dim=1).values - lo) / qmax, lo


def minmax_quant(x, scale, lo, bits: int):
    import torch

    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    return torch.clamp(torch.round((x - lo) / safe), 0, 2 ** bits - 1) * scale + lo


class _Grid:
    """One block's grid for a column of ``rows``: quantize, and the values its extremes map to
    (pinned: the weight that set a block's min (max) gets exactly that value)."""

    def __init__(self, kind: str, w, bits: int):
        import torch

        self.kind, self.bits, self.qmax = kind, bits, 2 ** bits - 1
        if kind == "onnx":
            self.scale, self.zero = group_params(w, bits)
            self.lo_val, self.hi_val = -self.zero * self.scale, (self.qmax - self.zero) * self.scale
            self.lo_ok, self.hi_ok = self.zero > 0, self.zero < self.qmax
        else:
            self.scale, self.zero = minmax_params(w, bits)
            self.lo_val, self.hi_val = self.zero, self.zero + self.qmax * self.scale
            self.lo_ok = self.hi_ok = torch.ones_like(self.scale, dtype=torch.bool)
        self.lo_at, self.hi_at = w.argmin(dim=1), w.argmax(dim=1)  # (rows,) column within the block

    def quant(self, col):
        if self.kind == "onnx":
            return fake_quant(col, self.scale, self.zero, self.bits)
        return minmax_quant(col, self.scale, self.zero, self.bits)

    def quant_pinned(self, col, j: int):
        """``col`` = the block's column ``j`` (0-based inside the block), extremes pinned."""
        import torch

        q = self.quant(col)
        q = torch.where((self.lo_at == j) & self.lo_ok, self.lo_val, q)
        return torch.where((self.hi_at == j) & self.hi_ok, self.hi_val, q)


def rtn(w, bits: int = 4, group: int = 32, grid: str = "onnx"):
    """Round-to-nearest of ``w`` (out, in), blockwise along the input."""
    out = w.clone()
    for c in range(0, w.shape[1], group):
        g = _Grid(grid, w[:, c:c + group], bits)
        out[:, c:c + group] = g.quant(w[:, c:c + group].T).T
    return out


def gptq(w, hessian, bits: int = 4, group: int = 32, damp: float = 0.01, block: int = 128, grid: str = "onnx",
         act_order: bool = False):
    """GPTQ of ``w`` (out, in) with ``hessian`` = X^T X (in, in); returns the quantized weights.

    Blocks of ``group`` inputs stay contiguous (the exporter's layout). Without ``act_order`` a
    block's grid is chosen from the error-updated weights when GPTQ reaches it; with it, columns
    go by decreasing ``diag(H)`` and every block's grid is fixed from the original weights
    ("static groups"), since a block's columns are then visited out of order."""
    import torch

    from .calibration import inverse_hessian_factor

    cols = w.shape[1]
    perm = None
    grids: dict[int, _Grid] = {}
    if act_order:
        w0 = w.clone().float()
        w0[:, hessian.diagonal() == 0] = 0.0
        grids = {c // group: _Grid(grid, w0[:, c:c + group], bits) for c in range(0, cols, group)}
        perm = torch.argsort(hessian.diagonal(), descending=True)
        w, hessian = w[:, perm], hessian[perm][:, perm]
    w, hinv = inverse_hessian_factor(w, hessian, damp)
    q = torch.zeros_like(w)
    g = None
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1, err1, hb = w[:, i1:i2].clone(), torch.zeros(w.shape[0], i2 - i1), hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            c = i1 + i if perm is None else int(perm[i1 + i])  # the original column
            if perm is not None:
                g = grids[c // group]
            elif c % group == 0:  # a new block of the grid: from the updated weights
                g = _Grid(grid, w1[:, i:i + group], bits)
            col = w1[:, i]
            qc = g.quant_pinned(col, c % group)  # extremes pinned: a re-quantizer recomputes this grid
            q[:, i1 + i] = qc
            e = (col - qc) / hb[i, i]
            w1[:, i:] -= e[:, None] * hb[i, i:][None, :]  # spread the error over later columns
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    if perm is not None:
        q = q[:, torch.argsort(perm)]
    return q


def quantize_weights(source: SourceModel, config: QuantizeConfig = QuantizeConfig(),
                     calibration_text: str | None = None) -> SourceModel:
    """The model with its decoder linears on the 4-bit grid (GPTQ or round-to-nearest), in float."""
    import torch

    if config.method not in ("gptq", "rtn"):
        raise ValueError(f"method must be 'gptq' or 'rtn', not {config.method!r}")
    if config.grid not in GRIDS:
        raise ValueError(f"grid must be one of {', '.join(GRIDS)}, not {config.grid!r}")
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
            new = gptq(w, stats[name], config.bits, config.group_size, config.damp, config.block, config.grid,
                       config.act_order) \
                if config.method == "gptq" else rtn(w, config.bits, config.group_size, config.grid)
            lin.weight.copy_(new)
    step = {"technique": f"int{config.bits}_{config.method}" + ("_minmax" if config.grid == "minmax" else ""), **asdict(config), "calibration_tokens_seen": tokens,
            "cpu_seconds": round(time.process_time() - t0, 1)}
    return derive(source, module, step)
