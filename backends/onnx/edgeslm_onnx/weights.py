"""Weights for the graph writer: float matrices, or a GGUF's own blocks, by Hugging Face name.

The writer asks for ``model.layers.3.self_attn.q_proj`` and gets one of

- :class:`FloatLinear`  ``w`` (N, K) float32 (+ bias): a plain MatMul;
- :class:`BlockLinear`  the GGUF's blocks of 32, unchanged: ``codes`` (N, K/32, 32) uint8,
  ``scales`` (N, K/32) and, for Q4_1, ``offset`` (N, K/32) = ``m + 8d`` so that
  ``d*q + m = d*(q - 8) + offset`` (onnxruntime's fast symmetric 4-bit kernel plus an exact
  per-block term). Q8_0 codes are stored +128 (uint8, zero point 128).

Projections that read the same input (q/k/v, gate/up) are packed along N with :func:`pack`;
blocks pack exactly (rows are independent).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

BLOCK = 32


@dataclass
class FloatLinear:
    w: np.ndarray  # (N, K) float32
    bias: np.ndarray | None = None  # (N,)

    @property
    def shape(self) -> tuple[int, int]:
        return self.w.shape


@dataclass
class BlockLinear:
    qtype: str  # "Q4_1" | "Q8_0"
    codes: np.ndarray  # (N, K/32, 32) uint8, values 0..15 (4-bit) or 0..255 (8-bit, +128)
    scales: np.ndarray  # (N, K/32) float32
    offset: np.ndarray | None = None  # (N, K/32) float32, Q4_1 only: m + 8d
    bias: np.ndarray | None = None

    @property
    def bits(self) -> int:
        return 4 if self.qtype == "Q4_1" else 8

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape[0], self.codes.shape[1] * BLOCK

    def dequantize(self) -> np.ndarray:
        """(N, K) float32, what the graph computes from these blocks."""
        zero = 8.0 if self.bits == 4 else 128.0
        w = (self.codes.astype(np.float32) - zero) * self.scales[..., None]
        if self.offset is not None:
            w = w + self.offset[..., None]
        return w.reshape(self.shape)


def pack(parts: list) -> FloatLinear | BlockLinear:
    """Concatenate projections along N (output features); all of one kind."""
    if len(parts) == 1:
        return parts[0]
    biases = [p.bias for p in parts]
    bias = None if all(b is None for b in biases) else np.concatenate(
        [b if b is not None else np.zeros(p.shape[0], np.float32) for b, p in zip(biases, parts)])
    if all(isinstance(p, FloatLinear) for p in parts):
        return FloatLinear(np.concatenate([p.w for p in parts]), bias)
    kinds = {p.qtype if isinstance(p, BlockLinear) else "float" for p in parts}
    if len(kinds) != 1:
        raise ValueError(f"cannot pack projections of different kinds {sorted(kinds)}")
    offsets = None if parts[0].offset is None else np.concatenate([p.offset for p in parts])
    return BlockLinear(parts[0].qtype, np.concatenate([p.codes for p in parts]),
                       np.concatenate([p.scales for p in parts]), offsets, bias)


class FloatWeights:
    """Float32 weights from a Hugging Face state dict (numpy arrays)."""

    def __init__(self, state: dict[str, np.ndarray]):
        self.state = state

    def vector(self, name: str) -> np.ndarray:
        return self.state[name].astype(np.float32)

    def has(self, name: str) -> bool:
        return name in self.state

    def linear(self, name: str) -> FloatLinear | BlockLinear:
        bias = self.state.get(name + ".bias")
        return FloatLinear(self.state[name + ".weight"].astype(np.float32),
                           None if bias is None else bias.astype(np.float32))

    def embedding(self, name: str) -> FloatLinear | BlockLinear:
        return FloatLinear(self.state[name + ".weight"].astype(np.float32))


def _digest(arr: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(arr, dtype=np.float32).tobytes()).hexdigest()


class GgufWeights(FloatWeights):
    """The state dict's matrices replaced by the GGUF blocks they were dequantized from.

    A state-dict matrix is matched to a GGUF tensor by content (sha1 of the dequantized values,
    llama.cpp's Q/K row permutation undone), so no name mapping per family is needed; a matrix
    with no Q4_1/Q8_0 twin stays float (and is reported)."""

    def __init__(self, state: dict[str, np.ndarray], gguf_path: str, n_head: int, n_kv: int):
        super().__init__(state)
        from .quantize import gguf_blocks

        self.blocks: dict[str, BlockLinear] = {}
        self.max_abs_error = 0.0
        by_digest: dict[str, list[str]] = {}
        for name, arr in state.items():
            if name.endswith(".weight") and arr.ndim == 2:
                by_digest.setdefault(_digest(arr), []).append(name[: -len(".weight")])
        self.kinds: dict[str, int] = {}
        for _, qtype, codes, scales, zp, deq in gguf_blocks(gguf_path, n_head, n_kv):
            names = by_digest.get(_digest(deq), [])
            if not names:
                continue
            if qtype == "Q4_1":
                blk = BlockLinear(qtype, codes, scales, offset=(scales * (8.0 - zp)).astype(np.float32))
            else:
                blk = BlockLinear(qtype, codes, scales)
            self.max_abs_error = max(self.max_abs_error, float(np.abs(blk.dequantize() - deq).max()))
            for n in names:
                self.blocks[n] = blk
            self.kinds[qtype] = self.kinds.get(qtype, 0) + 1  # GGUF tensors used

    def linear(self, name: str) -> FloatLinear | BlockLinear:
        blk = self.blocks.get(name)
        if blk is None:
            return super().linear(name)
        bias = self.state.get(name + ".bias")
        return BlockLinear(blk.qtype, blk.codes, blk.scales, blk.offset,
                           None if bias is None else bias.astype(np.float32))

    def embedding(self, name: str) -> FloatLinear | BlockLinear:
        blk = self.blocks.get(name)
        return blk if blk is not None and blk.qtype == "Q8_0" else super().embedding(name)


def q4_1_blocks(w: np.ndarray) -> BlockLinear:
    """Float ``w`` (N, K) -> Q4_1 blocks of 32 (llama.cpp's grid: ``d = (max - min) / 15``, float
    minimum ``m``, codes ``round((w - m) / d)``), stored like a GGUF's: offset ``m + 8d``.
    Weights already on such a grid (a dequantized Q4_1 GGUF) come back exactly."""
    n, k = w.shape
    if k % BLOCK:
        raise ValueError(f"{k} inputs are not a multiple of {BLOCK}")
    b = w.astype(np.float32).reshape(n, k // BLOCK, BLOCK)
    lo, hi = b.min(-1), b.max(-1)
    d = ((hi - lo) / np.float32(15)).astype(np.float32)
    safe = np.where(d == 0, np.float32(1), d)
    codes = np.clip(np.rint((b - lo[..., None]) / safe[..., None]), 0, 15).astype(np.uint8)
    return BlockLinear("Q4_1", codes, d, offset=(lo + 8 * d).astype(np.float32))


def q8_0_blocks(w: np.ndarray) -> BlockLinear:
    """Float ``w`` (N, K) -> Q8_0 blocks of 32 (symmetric, ``d = max|w| / 127``), codes +128."""
    n, k = w.shape
    b = w.astype(np.float32).reshape(n, k // BLOCK, BLOCK)
    d = (np.abs(b).max(-1) / np.float32(127)).astype(np.float32)
    safe = np.where(d == 0, np.float32(1), d)
    codes = (np.clip(np.rint(b / safe[..., None]), -127, 127) + 128).astype(np.uint8)
    return BlockLinear("Q8_0", codes, d)


class MinMaxWeights(FloatWeights):
    """Float weights quantized here to the GGUF's block kinds: decoder linears (``.layers.``) to
    Q4_1 (4-bit, float minimum per block of 32), the embedding (and a tied or separate lm_head)
    to Q8_0; norms and biases stay float. Written like int4-gguf's blocks (MatMulNBits 4-bit +
    exact per-block offset), so a model put on this grid in float (``quantize_weights`` with
    ``grid="minmax"``) is stored exactly."""

    def __init__(self, state: dict[str, np.ndarray]):
        super().__init__(state)
        self.blocks: dict[str, BlockLinear] = {}
        self.max_abs_error = 0.0
        self.kinds: dict[str, int] = {}

    def _blocks(self, name: str, fn) -> BlockLinear | None:
        w = self.state.get(name + ".weight")
        if w is None or w.ndim != 2 or w.shape[1] % BLOCK:
            return None
        if name not in self.blocks:
            blk = fn(w)
            self.max_abs_error = max(self.max_abs_error, float(np.abs(blk.dequantize() - w).max()))
            self.blocks[name] = blk
            self.kinds[blk.qtype] = self.kinds.get(blk.qtype, 0) + 1
        return self.blocks[name]

    def linear(self, name: str) -> FloatLinear | BlockLinear:
        fn = q4_1_blocks if ".layers." in f".{name}." else q8_0_blocks if name == "lm_head" else None
        blk = self._blocks(name, fn) if fn is not None else None
        if blk is None:
            return super().linear(name)
        bias = self.state.get(name + ".bias")
        return BlockLinear(blk.qtype, blk.codes, blk.scales, blk.offset,
                           None if bias is None else bias.astype(np.float32))

    def embedding(self, name: str) -> FloatLinear | BlockLinear:
        return self._blocks(name, q8_0_blocks) or super().embedding(name)
