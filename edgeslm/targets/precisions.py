"""What one weight costs in bytes at each precision, and what the activations/KV cache cost.

The fit forecast sizes a model from these figures alone (no converter needed). Quantized
precisions carry their scales: a forecast that ignores them is a few percent short, which
is exactly the margin that decides whether a model fits a microcontroller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from ..errors import TargetError
from ..spec import ModelSpec


@dataclass(frozen=True)
class PrecisionCost:
    bits: int  # bits per stored weight
    # Weights sharing one scale. None = one scale per output channel; we use the hidden size
    # as the row length, the common case for a decoder's matrices (down_proj rows are longer,
    # so this over-counts scales slightly: the safe side).
    group: int | None
    scale_bytes: float  # bytes per group: scale (+ zero point)
    act_bytes: int  # bytes per activation and per KV-cache value at run time
    note: str


#: Format-neutral precisions: what any backend writing them stores, sized on the safe side.
#: Backends add their own (LiteRT's dynamic-int8, Core ML's palettized, ...) through the
#: ``edgeslm.formats`` entry point (:class:`edgeslm.plugins.FormatInfo`), and a target file may
#: carry the facts of the precisions it lists (``[precisions.NAME]``, docs/targets.md), so a
#: workstation without that backend installed can still size the device.
GENERIC: dict[str, PrecisionCost] = {
    "fp32": PrecisionCost(32, None, 0.0, 4, "float32 weights and activations"),
    "fp16": PrecisionCost(16, None, 0.0, 2, "float16 weights, activations and KV cache"),
    "bf16": PrecisionCost(16, None, 0.0, 2, "bfloat16 weights, activations and KV cache"),
    # int8 as ONNX MatMulNBits writes it (block 32, fp32 scale + uint8 zero point: 1.156 B/weight);
    # per-channel int8 (OpenVINO NNCF, LiteRT, Core ML) is smaller, so this errs on the safe side.
    "int8": PrecisionCost(8, 32, 5.0, 4, "int8 weights, block 32 fp32 scale + zero point, fp32 activations"),
    # Block-wise 4-bit (ONNX MatMulNBits): block 32, fp32 scale + 4-bit zero point = 0.64 B/weight.
    "int4": PrecisionCost(4, 32, 4.5, 4, "4-bit weights, block 32 with fp32 scale and 4-bit zero point"),
}


def known_precisions(declared: Mapping[str, PrecisionCost] | None = None) -> dict[str, PrecisionCost]:
    """Every precision the forecast can size: the generic ones, then those the installed plugins
    declare, then ``declared`` (a target file's own facts) for names no plugin declares.

    Why the plugin wins over a target file's copy: the plugin writes the file, its figures are the
    measured ones; the target's copy only stands in where the plugin is absent (a test keeps the
    shipped copies equal to the plugins'). The generic names cannot be redefined.
    """
    from ..plugins import formats

    out = dict(GENERIC)
    for info in formats().values():
        for name, cost in info.precisions.items():
            out.setdefault(name, cost)
    for name, cost in (declared or {}).items():
        out.setdefault(name, cost)
    return out


def cost(precision: str, table: Mapping[str, PrecisionCost] | None = None) -> PrecisionCost:
    """The sizing facts of ``precision`` from ``table`` (default: :func:`known_precisions`)."""
    table = known_precisions() if table is None else table
    try:
        return table[precision]
    except KeyError:
        raise TargetError(f"no sizing facts for precision '{precision}' (known: {', '.join(table)}); install "
                          f"the backend that writes it or declare [precisions.{precision}] in the target file") from None


#: bytes per activation / KV value when a target says how a format computes (``compute = "fp16"``)
COMPUTE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}


def act_bytes(precision: str, compute: str = "", table: Mapping[str, PrecisionCost] | None = None) -> int:
    """Bytes per activation and KV value: the format's compute type if the target names one."""
    return COMPUTE_BYTES[compute] if compute else cost(precision, table).act_bytes


def bytes_per_weight(spec: ModelSpec, precision: str, table: Mapping[str, PrecisionCost] | None = None) -> float:
    c = cost(precision, table)
    group = c.group or spec.hidden_size
    return c.bits / 8 + c.scale_bytes / group


def weights_bytes(spec: ModelSpec, precision: str, table: Mapping[str, PrecisionCost] | None = None) -> int:
    """Bytes of all parameters stored at ``precision``, a tied output head counted twice.

    Why twice: in practice the tied head gets its own copy. Quantizers give it its own matrix
    (the embedding is a gather table, the head a matmul): SmolLM2 ONNX int8 measured
    188,368,128 B = (134.5M + 28.3M head) x 1.157 B. In fp32, onnxruntime constant-folds the
    exported Transpose(embedding) into a second 113 MB initializer at load (measured RSS after
    load 778 MB for 538 MB of weights).
    """
    n = spec.num_parameters
    if spec.tie_word_embeddings:
        n += spec.vocab_size * spec.hidden_size
    return math.ceil(n * bytes_per_weight(spec, precision, table))


def kv_cache_bytes(spec: ModelSpec, precision: str, tokens: int, compute: str = "",
                   table: Mapping[str, PrecisionCost] | None = None) -> int:
    """layers x kv heads x head dim x 2 (K and V) x bytes per value x tokens."""
    return spec.kv_cache_bytes(tokens, act_bytes(precision, compute, table))
