"""Weights for the graph writer: float matrices, or a GGUF's own blocks, by Hugging Face name.

The writer asks for ``model.layers.3.self_attn.q_proj`` and gets one of

- :class:`FloatLinear`  ``w`` (N, K) float32 (+ bias): a plain MatMul;
- :class:`BlockLinear`  the GGUF's blocks, codes unchanged (:mod:`.gguf_blocks` says how each
  type maps): ``codes`` (N, K/block, block) uint8 around the kernel's zero point (8 for 4-bit,
  128 for 8-bit), ``scales`` (N, K/block) and, for types with a minimum (Q4_1, Q5_1, Q4_K, Q5_K),
  ``offset`` (N, K/32) so that ``w = scale*(code - zero) + offset`` (onnxruntime's fast
  symmetric kernel plus an exact per-block term).

Projections that read the same input (q/k/v, gate/up) are packed along N with :func:`pack`
when their blocks have one layout (rows are independent); :func:`pack_groups` packs runs of
equal layout when a K-quant mix gives them different types (Q4_K_M: ``attn_v`` in Q6_K).
"""

from __future__ import annotations

import dataclasses
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
    qtype: str  # the GGUF type ("Q4_1", "Q4_K", "Q6_K" ...; "Q4_1+Q4_K" when packed)
    codes: np.ndarray  # (N, K/block, block) uint8, 0..15 (4-bit, zero point 8) or 0..255 (8-bit, 128)
    scales: np.ndarray  # (N, K/block) float32
    offset: np.ndarray | None = None  # (N, K/32) float32, types with a minimum: w += offset
    bias: np.ndarray | None = None
    bits: int = 4  # MatMulNBits bits: 4 or 8
    block: int = BLOCK  # values per scale: 32, or 16 (Q3_K, Q6_K)

    @property
    def zero(self) -> int:
        return 8 if self.bits == 4 else 128

    @property
    def layout(self) -> tuple[int, int, bool]:
        """What must agree for two weights to pack into one MatMulNBits."""
        return self.bits, self.block, self.offset is not None

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape[0], self.codes.shape[1] * self.block

    def dequantize(self) -> np.ndarray:
        """(N, K) float32, what the graph computes from these blocks."""
        w = ((self.codes.astype(np.float32) - np.float32(self.zero)) * self.scales[..., None]).reshape(self.shape)
        if self.offset is not None:
            n, k = self.shape
            w = (w.reshape(n, k // BLOCK, BLOCK) + self.offset[..., None]).reshape(n, k)
        return w


def pack(parts: list) -> FloatLinear | BlockLinear:
    """Concatenate projections along N (output features); all of one kind."""
    if len(parts) == 1:
        return parts[0]
    biases = [p.bias for p in parts]
    bias = None if all(b is None for b in biases) else np.concatenate(
        [b if b is not None else np.zeros(p.shape[0], np.float32) for b, p in zip(biases, parts)])
    if all(isinstance(p, FloatLinear) for p in parts):
        return FloatLinear(np.concatenate([p.w for p in parts]), bias)
    kinds = {p.layout if isinstance(p, BlockLinear) else "float" for p in parts}
    if len(kinds) != 1:
        raise ValueError(f"cannot pack projections of different kinds {sorted(map(str, kinds))}")
    offsets = None if parts[0].offset is None else np.concatenate([p.offset for p in parts])
    qtype = "+".join(dict.fromkeys(p.qtype for p in parts))
    return BlockLinear(qtype, np.concatenate([p.codes for p in parts]), np.concatenate([p.scales for p in parts]),
                       offsets, bias, parts[0].bits, parts[0].block)


def pack_groups(parts: list) -> list:
    """Pack each run of consecutive projections of one layout: ``[q, k, v]`` with q/k Q4_K and
    v Q6_K -> ``[pack([q, k]), v]`` (the writer concatenates their outputs)."""
    runs: list[list] = []
    for p in parts:
        kind = p.layout if isinstance(p, BlockLinear) else "float"
        if runs and (runs[-1][0].layout if isinstance(runs[-1][0], BlockLinear) else "float") == kind:
            runs[-1].append(p)
        else:
            runs.append([p])
    return [pack(r) for r in runs]


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
    llama.cpp's Q/K row permutation undone), so no name mapping per family is needed. Float
    tensors (F32/F16/BF16) stay float; a quantized 2-D tensor of a type :mod:`.gguf_blocks`
    cannot transcode (Q2_K) is listed in ``untranscodable`` (the export refuses the file)."""

    def __init__(self, state: dict[str, np.ndarray], gguf_path: str, n_head: int, n_kv: int):
        super().__init__(state)
        from edgeslm.arch.gguf_common import unpermute_qk
        from edgeslm.sources.gguf import gguf_family
        from edgeslm.sources.gguf_file import GGUFFile
        from edgeslm.sources.gguf_quants import dequantize

        from .gguf_blocks import FLOAT_TYPES, LAYOUTS, split_blocks
        from .quantize import _row_perm

        self.blocks: dict[str, BlockLinear] = {}
        self.max_abs_error = 0.0
        self.kinds: dict[str, int] = {}  # GGUF tensors used, per type
        self.untranscodable: dict[str, list[str]] = {}  # type -> GGUF tensor names
        by_digest: dict[str, list[str]] = {}
        for name, arr in state.items():
            if name.endswith(".weight") and arr.ndim == 2:
                by_digest.setdefault(_digest(arr), []).append(name[: -len(".weight")])
        reader = GGUFFile(gguf_path)
        permuted = gguf_family(reader.architecture).gguf_fix is unpermute_qk
        for t in reader.tensors.values():
            qtype = t.type_name
            if len(t.shape) != 2 or qtype in FLOAT_TYPES:
                continue
            if qtype not in LAYOUTS:
                self.untranscodable.setdefault(qtype, []).append(t.name)
                continue
            raw = reader.raw(t.name)
            deq = dequantize(raw, qtype, t.shape)  # (N, K) float32, bit-identical to gguf-py's
            perm = _row_perm(t.name, t.shape[0], n_head, n_kv) if permuted else None
            if perm is not None:
                deq = deq[perm]
            names = by_digest.get(_digest(deq), [])
            if not names:
                continue
            codes, scales, offset = split_blocks(raw, qtype, t.shape)
            if perm is not None:
                codes, scales, offset = codes[perm], scales[perm], None if offset is None else offset[perm]
            bits, block, _ = LAYOUTS[qtype]
            blk = BlockLinear(qtype, codes, scales, offset, None, bits, block)
            self.max_abs_error = max(self.max_abs_error, float(np.abs(blk.dequantize() - deq).max()))
            for n in names:
                self.blocks[n] = blk
            self.kinds[qtype] = self.kinds.get(qtype, 0) + 1

    def linear(self, name: str) -> FloatLinear | BlockLinear:
        blk = self.blocks.get(name)
        if blk is None:
            return super().linear(name)
        bias = self.state.get(name + ".bias")
        return dataclasses.replace(blk, bias=None if bias is None else bias.astype(np.float32))

    def embedding(self, name: str) -> FloatLinear | BlockLinear:
        """The GGUF's blocks (GatherBlockQuantized; tied, the lm_head shares them)."""
        blk = self.blocks.get(name)
        return blk if blk is not None else super().embedding(name)


def q4_1_blocks(w: np.ndarray) -> BlockLinear:
    """Float ``w`` (N, K) -> Q4_1 blocks of 32 (llama.cpp's grid: ``d = (max - min) / 15``, float
    minimum ``m``, codes ``round((w - m) / d)``), stored like a GGUF's Q4_1: offset ``m + 8d``.
    Weights already on such a grid (a dequantized Q4_1 GGUF) come back exactly."""
    n, k = w.shape
    if k % BLOCK:
        raise ValueError(f"{k} inputs are not a multiple of {BLOCK}")
    b = w.astype(np.float32).reshape(n, k // BLOCK, BLOCK)
    lo, hi = b.min(-1), b.max(-1)
    d = ((hi - lo) / np.float32(15)).astype(np.float32)
    safe = np.where(d == 0, np.float32(1), d)
    codes = np.clip(np.rint((b - lo[..., None]) / safe[..., None]), 0, 15).astype(np.uint8)
    # the offset in the form the GGUF transcoder uses for Q4_1 (gguf_blocks._q4_1): d * (8 + m/d)
    offset = np.where(d == 0, lo, d * (np.float32(8) + lo / safe))
    return BlockLinear("Q4_1", codes, d, offset=offset.astype(np.float32))


def q8_0_blocks(w: np.ndarray) -> BlockLinear:
    """Float ``w`` (N, K) -> Q8_0 blocks of 32 (symmetric, ``d = max|w| / 127``), codes +128."""
    n, k = w.shape
    b = w.astype(np.float32).reshape(n, k // BLOCK, BLOCK)
    d = (np.abs(b).max(-1) / np.float32(127)).astype(np.float32)
    safe = np.where(d == 0, np.float32(1), d)
    codes = (np.clip(np.rint(b / safe[..., None]), -127, 127) + 128).astype(np.uint8)
    return BlockLinear("Q8_0", codes, d, bits=8)


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
        return dataclasses.replace(blk, bias=None if bias is None else bias.astype(np.float32))

    def embedding(self, name: str) -> FloatLinear | BlockLinear:
        return self._blocks(name, q8_0_blocks) or super().embedding(name)
