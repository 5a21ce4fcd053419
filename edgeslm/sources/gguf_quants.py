"""ggml tensor types -> float32, in numpy (no torch, no ``gguf`` package).

Each block type stores a run of values (32 for the legacy types, 256 for the K-quants) as
packed integers plus fp16 scales. The layouts below are llama.cpp's (``ggml-common.h``); the
arithmetic follows ``gguf-py``'s reference dequantizers operation for operation, so the
results are bit-identical to ``gguf.quants.dequantize`` (tests/test_gguf_quants.py checks it),
which the ONNX int4-gguf transcoder relies on when it matches weights by content.

================  ======  =====  ===============================================================
type              block   bytes  layout
================  ======  =====  ===============================================================
Q4_0              32      18     d f16, 16 B nibbles (low = elements 0..15); w = d * (q - 8)
Q4_1              32      20     d f16, m f16, 16 B nibbles;               w = d * q + m
Q5_0              32      22     d f16, qh u32 (5th bits), 16 B nibbles;    w = d * (q - 16)
Q5_1              32      24     d f16, m f16, qh u32, 16 B nibbles;        w = d * q + m
Q8_0              32      34     d f16, 32 x int8;                          w = d * q
Q2_K              256     84     16 B 4-bit scale|min pairs, 64 B 2-bit q, d, dmin
Q3_K              256     110    32 B high bits, 64 B 2-bit q, 12 B 6-bit scales, d
Q4_K              256     144    d, dmin, 12 B 6-bit scales/mins (8 sub-blocks of 32), 128 B q
Q5_K              256     176    d, dmin, 12 B scales/mins, 32 B high bits, 128 B q
Q6_K              256     210    128 B low 4 bits, 64 B high 2 bits, 16 x int8 scales, d
================  ======  =====  ===============================================================
"""

from __future__ import annotations

import numpy as np

QK_K = 256

#: ggml type id -> (name, values per block, bytes per block), for every id llama.cpp defines, so
#: a file's size can be checked and an unsupported type named even when it cannot be decoded.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8),
    28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}
TYPE_IDS = {name: tid for tid, (name, _, _) in GGML_TYPES.items()}


def _f16(b: np.ndarray) -> np.ndarray:
    """(n, 2) uint8 -> (n, 1) float32."""
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, 16) bytes -> (n, 32) values: low nibbles are elements 0..15, high nibbles 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _fifth_bits(qh: np.ndarray) -> np.ndarray:
    """(n, 4) bytes, one bit per element (little-endian u32) -> (n, 32) uint8 of 0/1."""
    return np.unpackbits(qh, axis=-1, bitorder="little")


def _q4_0(b):
    q = _nibbles(b[:, 2:]).astype(np.int8) - np.int8(8)
    return _f16(b[:, :2]) * q.astype(np.float32)


def _q4_1(b):
    return (_f16(b[:, :2]) * _nibbles(b[:, 4:]).astype(np.float32)) + _f16(b[:, 2:4])


def _q5_0(b):
    q = (_nibbles(b[:, 6:]) | (_fifth_bits(b[:, 2:6]) << np.uint8(4))).astype(np.int8) - np.int8(16)
    return _f16(b[:, :2]) * q.astype(np.float32)


def _q5_1(b):
    q = (_nibbles(b[:, 8:]) | (_fifth_bits(b[:, 4:8]) << np.uint8(4))).astype(np.float32)
    return (_f16(b[:, :2]) * q) + _f16(b[:, 2:4])


def _q8_0(b):
    return _f16(b[:, :2]) * np.ascontiguousarray(b[:, 2:]).view(np.int8).astype(np.float32)


def _k_scale_min(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K's 12 bytes -> 8 six-bit scales and 8 six-bit mins per super-block.

    bytes 0-3: scales 0-3 (low 6 bits), top 2 bits = high bits of scales 4-7;
    bytes 4-7: mins 0-3 likewise; bytes 8-11: low nibble = scales 4-7, high nibble = mins 4-7.
    """
    d, m, md = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = np.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc, mn


def _q4_k(b):
    n = b.shape[0]
    sc, mn = _k_scale_min(b[:, 4:16])
    d = (_f16(b[:, 0:2]) * sc.astype(np.float32)).reshape(n, 8, 1)
    dm = (_f16(b[:, 2:4]) * mn.astype(np.float32)).reshape(n, 8, 1)
    qs = b[:, 16:].reshape(n, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)  # 4 x 64 values
    q = (qs & np.uint8(0x0F)).reshape(n, 8, 32).astype(np.float32)
    return (d * q - dm).reshape(n, QK_K)


def _q5_k(b):
    n = b.shape[0]
    sc, mn = _k_scale_min(b[:, 4:16])
    d = (_f16(b[:, 0:2]) * sc.astype(np.float32)).reshape(n, 8, 1)
    dm = (_f16(b[:, 2:4]) * mn.astype(np.float32)).reshape(n, 8, 1)
    ql = b[:, 48:].reshape(n, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
    qh = b[:, 16:48].reshape(n, 1, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1, 1)
    q = (ql & np.uint8(0x0F)).reshape(n, 8, 32) | ((qh & np.uint8(1)).reshape(n, 8, 32) << np.uint8(4))
    return (d * q.astype(np.float32) - dm).reshape(n, QK_K)


def _q6_k(b):
    n = b.shape[0]
    ql, qh = b[:, :128], b[:, 128:192]
    scales = np.ascontiguousarray(b[:, 192:208]).view(np.int8).astype(np.float32)
    d = (_f16(b[:, 208:210]) * scales).reshape(n, 16, 1)
    lo = (ql.reshape(n, 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)) & np.uint8(0x0F)
    hi = (qh.reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & np.uint8(0x03)
    q = (lo.reshape(n, 8, 32) | (hi.reshape(n, 8, 32) << np.uint8(4))).astype(np.int8) - np.int8(32)
    return (d * q.reshape(n, 16, 16).astype(np.float32)).reshape(n, QK_K)


def _q2_k(b):
    n = b.shape[0]
    scales, qs = b[:, :16], b[:, 16:80]
    d, dmin = _f16(b[:, 80:82]), _f16(b[:, 82:84])
    dl = (d * (scales & 0xF).astype(np.float32)).reshape(n, 16, 1)
    ml = (dmin * (scales >> 4).astype(np.float32)).reshape(n, 16, 1)
    q = (qs.reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & np.uint8(3)
    return (dl * q.reshape(n, 16, 16).astype(np.float32) - ml).reshape(n, QK_K)


def _q3_k(b):
    n = b.shape[0]
    hmask, qs, s = b[:, :32], b[:, 32:96], b[:, 96:108]
    d = _f16(b[:, 108:110])
    lo = (s[:, :8].reshape(n, 1, 8) >> np.array([0, 4], np.uint8).reshape(1, 2, 1)).reshape(n, 16)
    hi = (s[:, 8:].reshape(n, 1, 4) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 4, 1)).reshape(n, 16)
    sc = ((lo & np.uint8(0x0F)) | ((hi & np.uint8(0x03)) << np.uint8(4))).astype(np.int8) - np.int8(32)
    dl = (d * sc.astype(np.float32)).reshape(n, 16, 1)
    ql = (qs.reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)).reshape(n, 16, 16) & np.uint8(3)
    qh = (hmask.reshape(n, 1, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1, 1)).reshape(n, 16, 16) & np.uint8(1)
    q = (ql.astype(np.int8) - ((qh ^ np.uint8(1)) << np.uint8(2)).astype(np.int8)).astype(np.float32)
    return (dl * q).reshape(n, QK_K)


_BLOCK_DECODERS = {"Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1, "Q8_0": _q8_0,
                   "Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k}
_FLOATS = {"F32": np.float32, "F16": np.float16}

#: the type names :func:`dequantize` decodes
SUPPORTED = ("F32", "F16", "BF16", *_BLOCK_DECODERS)

_CHUNK_BLOCKS = 1 << 16  # decode this many blocks at a time: bounded temporaries, cache-friendly


def dequantize(raw: np.ndarray, type_name: str, shape: tuple[int, ...]) -> np.ndarray:
    """``raw`` (the tensor's bytes, uint8) -> float32 array of ``shape`` (row-major, last dim
    the ggml row). Raises KeyError for a type not in :data:`SUPPORTED`."""
    raw = np.asarray(raw).reshape(-1).view(np.uint8)
    if type_name in _FLOATS:
        return raw.view(_FLOATS[type_name]).astype(np.float32).reshape(shape)
    if type_name == "BF16":
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
    decode = _BLOCK_DECODERS[type_name]
    _, _, block_bytes = GGML_TYPES[TYPE_IDS[type_name]]
    blocks = raw.reshape(-1, block_bytes)
    out = np.empty((blocks.shape[0], GGML_TYPES[TYPE_IDS[type_name]][1]), dtype=np.float32)
    for start in range(0, blocks.shape[0], _CHUNK_BLOCKS):
        out[start:start + _CHUNK_BLOCKS] = decode(blocks[start:start + _CHUNK_BLOCKS])
    return out.reshape(shape)
