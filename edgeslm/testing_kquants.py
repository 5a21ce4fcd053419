"""A small numpy encoder for llama.cpp's K-quants (Q4_K, Q5_K, Q6_K), for test files only.

``gguf-py`` decodes K-quants but cannot write them, so tests that need K-quant blocks in a
GGUF (:mod:`edgeslm.testing_gguf`) encode them here. The encoding is the simple one (per
sub-block min/max, scales rounded to 6 or 8 bits), not llama.cpp's error-minimizing search:
the blocks are valid and decode to a close approximation, which is all a test needs; the
decoders under test are :mod:`edgeslm.sources.gguf_quants` and gguf-py's. Layouts: see there.
"""

from __future__ import annotations

import numpy as np

QK_K = 256


def _f16(x: np.ndarray) -> np.ndarray:
    """(n,) float -> (n, 2) uint8 of float16."""
    return np.ascontiguousarray(x.astype(np.float16).reshape(-1, 1)).view(np.uint8)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b == 0, 0.0, a / np.where(b == 0, 1.0, b))


def _pack_scale_min(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """8 six-bit scales and mins per super-block -> 12 bytes (the inverse of ``_k_scale_min``)."""
    sc, mn = sc.astype(np.uint8), mn.astype(np.uint8)
    out = np.empty((sc.shape[0], 12), np.uint8)
    out[:, 0:4] = (sc[:, :4] & 0x3F) | ((sc[:, 4:] >> 4) << 6)
    out[:, 4:8] = (mn[:, :4] & 0x3F) | ((mn[:, 4:] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)
    return out


def _asymmetric(x: np.ndarray, levels: int):
    """Q4_K/Q5_K arithmetic: x ~ d*sc*q - dmin*m per sub-block of 32, q in [0, levels]."""
    n = x.shape[0]
    sub = x.reshape(n, 8, 32)
    lo = np.minimum(sub.min(-1), 0.0)  # the offset is subtracted, so it is stored non-negative
    scale = (sub.max(-1) - lo) / levels  # (n, 8)
    offset = -lo
    d = scale.max(-1) / 63.0
    dmin = offset.max(-1) / 63.0
    d16, dmin16 = d.astype(np.float16).astype(np.float32), dmin.astype(np.float16).astype(np.float32)
    sc = np.clip(np.rint(_div(scale, d16[:, None])), 0, 63)
    mn = np.clip(np.rint(_div(offset, dmin16[:, None])), 0, 63)
    step = (d16[:, None] * sc)[..., None]  # what the decoder will multiply by
    base = (dmin16[:, None] * mn)[..., None]
    q = np.clip(np.rint(_div(sub + base, np.broadcast_to(step, sub.shape))), 0, levels).astype(np.uint8)
    return d16, dmin16, _pack_scale_min(sc, mn), q.reshape(n, QK_K)


def _blocks(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.shape[-1] % QK_K:
        raise ValueError(f"K-quants need rows of a multiple of {QK_K} values, got {x.shape[-1]}")
    return x.reshape(-1, QK_K)


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """float array (..., K) -> uint8 (..., K / 256 * 144)."""
    b = _blocks(x)
    d, dmin, scales, q = _asymmetric(b, 15)
    qq = q.reshape(-1, 4, 2, 32)  # element c*64 + s*32 + i lives in nibble s of byte c*32 + i
    qs = (qq[:, :, 0] | (qq[:, :, 1] << 4)).reshape(-1, 128)
    out = np.concatenate([_f16(d), _f16(dmin), scales, qs], axis=1)
    return out.reshape(*np.shape(x)[:-1], -1)


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    """float array (..., K) -> uint8 (..., K / 256 * 176)."""
    b = _blocks(x)
    d, dmin, scales, q = _asymmetric(b, 31)
    lo = (q & 0x0F).reshape(-1, 4, 2, 32)
    qs = (lo[:, :, 0] | (lo[:, :, 1] << 4)).reshape(-1, 128)
    hi = (q >> 4).reshape(-1, 8, 32)  # bit j of qh[i] is the fifth bit of element j*32 + i
    qh = np.zeros((b.shape[0], 32), np.uint8)
    for j in range(8):
        qh |= hi[:, j] << j
    out = np.concatenate([_f16(d), _f16(dmin), scales, qh, qs], axis=1)
    return out.reshape(*np.shape(x)[:-1], -1)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """float array (..., K) -> uint8 (..., K / 256 * 210); x ~ d * sc * (q - 32), 16 x 16."""
    b = _blocks(x)
    n = b.shape[0]
    sub = b.reshape(n, 16, 16)
    scale = np.abs(sub).max(-1) / 32.0
    d = scale.max(-1) / 127.0
    d16 = d.astype(np.float16).astype(np.float32)
    sc = np.clip(np.rint(_div(scale, d16[:, None])), 0, 127)
    step = np.broadcast_to((d16[:, None] * sc)[..., None], sub.shape)
    q = (np.clip(np.rint(_div(sub, step)), -32, 31) + 32).astype(np.uint8).reshape(n, QK_K)
    lo = (q & 0x0F).reshape(n, 2, 2, 64)  # element h*128 + s*64 + i: nibble s of ql[h*64 + i]
    ql = (lo[:, :, 0] | (lo[:, :, 1] << 4)).reshape(n, 128)
    hi = (q >> 4).reshape(n, 2, 4, 32)  # element h*128 + k*32 + i: bits 2k of qh[h*32 + i]
    qh = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)).reshape(n, 64)
    out = np.concatenate([ql, qh, sc.astype(np.int8).view(np.uint8), _f16(d16)], axis=1)
    return out.reshape(*np.shape(x)[:-1], -1)


ENCODERS = {"Q4_K": quantize_q4_k, "Q5_K": quantize_q5_k, "Q6_K": quantize_q6_k}


def random_blocks(type_name: str, n_blocks: int, seed: int = 0) -> np.ndarray:
    """Random but well-formed blocks of any supported block type (finite fp16 scales), for
    comparing decoders on every bit pattern of the packed integers."""
    from .sources.gguf_quants import GGML_TYPES, TYPE_IDS

    _, _, nbytes = GGML_TYPES[TYPE_IDS[type_name]]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(n_blocks, nbytes), dtype=np.uint8)
    scales = _f16(rng.uniform(-0.05, 0.05, size=n_blocks * 2)).reshape(n_blocks, 4)
    where = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0], "Q2_K": [80, 82],
             "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}[type_name]
    for k, at in enumerate(where):
        raw[:, at:at + 2] = scales[:, 2 * k:2 * k + 2]
    return raw
