"""Quantization specs: what to quantize and how, independent of any backend.

Each exporter maps a :class:`QuantSpec` to its own native quantizer (ONNX: MatMulNBits 4-bit
and weight-only int8; OpenVINO: NNCF; LiteRT: its recipes; Core ML: coremltools.optimize).
edgeslm never writes quantized weights itself: the runtime's quantizer knows its kernels.

>>> QuantSpec.preset("int4").group_size
32
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

#: layer kinds a spec can keep at higher precision
LAYER_KINDS = ("embedding", "lm_head")


@dataclass(frozen=True)
class QuantSpec:
    """How weights are quantized. Backends read it; unknown combinations raise there."""

    bits: int  # 8 or 4: weight bits of the decoder's linear layers
    group_size: int | None = None  # weights sharing one scale (None = per output channel)
    symmetric: bool = True  # False = a zero point per group (asymmetric / "affine")
    keep_higher: tuple[str, ...] = ()  # layer kinds left in float ("embedding", "lm_head")
    # "requantize": quantize the float weights; "transcode": map an already-quantized GGUF's
    # blocks (scales, mins, nibbles) 1:1 into the backend's format, without re-rounding
    method: str = "requantize"
    name: str = ""  # the preset's name, if it came from one

    def __post_init__(self):
        if self.bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, not {self.bits}")
        if self.group_size is not None and self.group_size <= 0:
            raise ValueError(f"group_size must be positive, not {self.group_size}")
        unknown = set(self.keep_higher) - set(LAYER_KINDS)
        if unknown:
            raise ValueError(f"keep_higher accepts {LAYER_KINDS}, not {sorted(unknown)}")
        if self.method not in ("requantize", "transcode"):
            raise ValueError(f"method must be 'requantize' or 'transcode', not {self.method!r}")

    @classmethod
    def preset(cls, name: str) -> "QuantSpec":
        try:
            return PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown quantization preset {name!r}; known: {', '.join(PRESETS)}") from None

    def with_(self, **changes: Any) -> "QuantSpec":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["keep_higher"] = list(self.keep_higher)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QuantSpec":
        d = dict(d)
        d["keep_higher"] = tuple(d.get("keep_higher") or ())
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


PRESETS: dict[str, QuantSpec] = {
    # weight-only per-output-channel int8; keeps 29/30 greedy tokens on SmolLM2 (FINDINGS.md)
    "int8": QuantSpec(bits=8, group_size=None, symmetric=True, name="int8"),
    # re-quantized 4-bit, block 32 with zero points (MatMulNBits); embedding stays higher
    "int4": QuantSpec(bits=4, group_size=32, symmetric=False, keep_higher=("embedding",), name="int4"),
    # a Q4_1 GGUF's blocks (32 weights, scale + min) carried over exactly
    "int4-gguf": QuantSpec(bits=4, group_size=32, symmetric=False, keep_higher=("embedding",),
                           method="transcode", name="int4-gguf"),
}
