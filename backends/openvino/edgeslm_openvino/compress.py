"""NNCF weight-only compression of an OpenVINO model (int8 per-channel, int4 grouped).

int4 is mixed precision: NNCF keeps the embedding and the last matmul (lm_head; with tied
embeddings the same constant) in the 8-bit backup mode unless ``all_layers`` is set, which
protects quality at a few MB. What stayed 8-bit is read back from the compressed graph and
recorded in the manifest, so the record says what the file holds, not what was asked for.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from typing import Any

from edgeslm.errors import ExportError

#: element types NNCF writes for compressed weights, by bit width
_BITS = {"u8": 8, "i8": 8, "u4": 4, "i4": 4, "nf4": 4}


@dataclass
class CompressionConfig:
    """Knobs for ``--precision int8|int4``; set them through ExportSpec.options."""

    int8_mode: str = "int8_asym"  # nncf.CompressWeightsMode for int8: asym kept 29/29 on SmolLM2
    int4_mode: str = "int4_asym"  # nncf.CompressWeightsMode for int4
    group_size: int = 64  # int4 values sharing one scale; 64 divides SmolLM2's 576 and 1536 and the tiny 64
    group_size_fallback: str = "adjust"  # when a row length is not a multiple: "adjust" | "error" | "ignore"
    ratio: float = 1.0  # share of ratio-defining layers in int4; the rest use backup_mode
    backup_mode: str = "int8_asym"  # precision of layers not in int4 (embedding, lm_head, 1 - ratio)
    all_layers: bool = False  # True puts embedding and lm_head in int4 too (smaller, worse)

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "CompressionConfig":
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in options.items() if k in names}
        cfg = cls(**kw)
        cfg.group_size, cfg.ratio = int(cfg.group_size), float(cfg.ratio)
        if isinstance(cfg.all_layers, str):
            cfg.all_layers = cfg.all_layers.lower() in ("1", "true", "yes")
        if not 0.0 <= cfg.ratio <= 1.0:
            raise ExportError(f"ratio must be in [0, 1], got {cfg.ratio}")
        return cfg


def compress(model, precision: str, cfg: CompressionConfig):
    """Compress ``model`` (an openvino.Model) in place for ``precision``; return (model, record)."""
    from edgeslm._deps import require

    nncf = require("nncf", "export", "OpenVINO int8/int4 weight compression")
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    nncf.set_log_level(logging.WARNING)
    try:
        if precision == "int8":
            mode = nncf.CompressWeightsMode(cfg.int8_mode)
            out = nncf.compress_weights(model, mode=mode)
            asked = {"mode": cfg.int8_mode}
        elif precision == "int4":
            mode = nncf.CompressWeightsMode(cfg.int4_mode)
            adv = AdvancedCompressionParameters(group_size_fallback_mode=GroupSizeFallbackMode(cfg.group_size_fallback))
            out = nncf.compress_weights(model, mode=mode, group_size=cfg.group_size, ratio=cfg.ratio,
                                        all_layers=cfg.all_layers, backup_mode=nncf.BackupMode(cfg.backup_mode),
                                        advanced_parameters=adv)
            asked = {k: v for k, v in asdict(cfg).items() if k != "int8_mode"}
            asked["mode"] = asked.pop("int4_mode")
        else:
            raise ExportError(f"no compression for precision '{precision}'")
    except ExportError:
        raise
    except Exception as exc:  # nncf's own errors (InvalidGroupSizeError ...) derive from Exception
        # e.g. "Failed to apply group-wise quantization with group size value 128": name the fix
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"NNCF {precision} compression failed: {first} Try a group_size that divides "
                          f"the layer widths, or group_size_fallback='adjust'.") from exc
    return out, {"library": "nncf", "nncf_version": nncf.__version__, **asked, **describe(out)}


def describe(model) -> dict[str, Any]:
    """Count compressed weight matrices by bit width and name the 8-bit ones (int4 mixes)."""
    layers: dict[int, list[str]] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Constant":
            continue
        bits = _BITS.get(op.get_element_type().get_type_name())
        name = op.get_friendly_name()
        if bits is None or name.endswith(("zero_point", "/zp")):
            continue
        layers.setdefault(bits, []).append(_short(name))
    out: dict[str, Any] = {"layers_by_bits": {str(b): len(n) for b, n in sorted(layers.items())}}
    if 4 in layers:  # a mix: say which stayed 8-bit (embedding, lm_head, ratio < 1)
        out["int8_layers"] = layers.get(8, [])
    return out


def _short(name: str) -> str:
    """'self.model.embed_tokens.weight' -> 'model.embed_tokens.weight' (the HF parameter name)."""
    return name[5:] if name.startswith("self.") else name
