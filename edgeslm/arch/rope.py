"""Rotary frequencies for every RoPE scaling the families use, in numpy (no torch).

Each function returns ``(inv_freq, attention_factor)``: the per-pair angular frequencies of the
rotated dims and the factor cos/sin are multiplied by (1.0 except for yarn and longrope). The
formulas follow the papers and agree with transformers' ``modeling_rope_utils`` (tested in
tests/arch/test_rope.py).
"""

from __future__ import annotations

import math

import numpy as np

from .config import RopeConfig


def _base(theta: float, dim: int) -> np.ndarray:
    return theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)  # (dim/2,)


def inv_freq(rope: RopeConfig, head_dim: int, context_length: int) -> tuple[np.ndarray, float]:
    dim = rope.rotary_dim or head_dim
    p = rope.params
    kind = rope.scaling
    if kind in ("default", "none"):
        return 1.0 / _base(rope.theta, dim), 1.0
    if kind == "linear":
        return 1.0 / _base(rope.theta, dim) / float(p["factor"]), 1.0
    if kind == "llama3":
        return _llama3(rope, dim), 1.0
    if kind == "yarn":
        return _yarn(rope, dim, context_length)
    if kind == "longrope":
        return _longrope(rope, dim, context_length)
    raise ValueError(f"RoPE scaling '{kind}' is not supported; supported: default, linear, llama3, yarn, longrope")


def _llama3(rope: RopeConfig, dim: int) -> np.ndarray:
    p = rope.params
    factor, low, high = float(p["factor"]), float(p["low_freq_factor"]), float(p["high_freq_factor"])
    old_ctx = float(p["original_max_position_embeddings"])
    inv = 1.0 / _base(rope.theta, dim)
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > old_ctx / low, inv / factor, inv)  # long wavelengths: interpolate
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
    return np.where(medium, smoothed, scaled)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(rope: RopeConfig, dim: int, context_length: int) -> tuple[np.ndarray, float]:
    p = rope.params
    factor = float(p["factor"])
    original = p.get("original_max_position_embeddings") or context_length
    if p.get("original_max_position_embeddings") and p.get("max_position_embeddings"):
        factor = float(p["max_position_embeddings"]) / float(original)
    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        if p.get("mscale") and p.get("mscale_all_dim"):
            attention_factor = _yarn_mscale(factor, p["mscale"]) / _yarn_mscale(factor, p["mscale_all_dim"])
        else:
            attention_factor = _yarn_mscale(factor)
    beta_fast, beta_slow = float(p.get("beta_fast") or 32), float(p.get("beta_slow") or 1)

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(rope.theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    extrapolate = 1 - ramp  # 1: keep the original frequency (fast-rotating dims)
    base = _base(rope.theta, dim)
    inv = (1.0 / (factor * base)) * (1 - extrapolate) + (1.0 / base) * extrapolate
    return inv, float(attention_factor)


def _longrope(rope: RopeConfig, dim: int, context_length: int) -> tuple[np.ndarray, float]:
    """Phi-3/4's LongRoPE. transformers switches factors by the running sequence length; an
    export has one context length (``context_length``: the export's, not the model's maximum),
    so the long factors are used when it exceeds the original training length, the short ones
    otherwise (the choice transformers makes for a sequence of that length)."""
    p = rope.params
    original = float(p["original_max_position_embeddings"])
    factor = float(p.get("factor") or (p.get("max_position_embeddings") or context_length) / original)
    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))
    ext = np.asarray(p["long_factor"] if context_length > original else p["short_factor"], dtype=np.float64)
    return 1.0 / (ext * _base(rope.theta, dim)), float(attention_factor)
