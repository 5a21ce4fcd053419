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
    int8_embedding: str = "fp16"  # int8 only: "fp16" keeps the embedding (= tied lm_head) in fp16; "int8"

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "CompressionConfig":
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in options.items() if k in names}
        cfg = cls(**kw)
        cfg.group_size, cfg.ratio = int(cfg.group_size), float(cfg.ratio)
        if cfg.int8_embedding not in ("fp16", "int8"):
            raise ExportError(f"int8_embedding must be 'fp16' or 'int8', got {cfg.int8_embedding!r}")
        if isinstance(cfg.all_layers, str):
            cfg.all_layers = cfg.all_layers.lower() in ("1", "true", "yes")
        if not 0.0 <= cfg.ratio <= 1.0:
            raise ExportError(f"ratio must be in [0, 1], got {cfg.ratio}")
        return cfg


def compress(model, precision: str, cfg: CompressionConfig):
    """Compress ``model`` (an openvino.Model) in place for ``precision``; return (model, record)."""
    from edgeslm._deps import require
    from edgeslm.quiet import library_stdout

    nncf = require("nncf", "export", "OpenVINO int8/int4 weight compression")
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    nncf.set_log_level(logging.WARNING)
    try:
        if precision == "int8":
            mode = nncf.CompressWeightsMode(cfg.int8_mode)
            embedding = _embedding_ops(model) if cfg.int8_embedding == "fp16" else None
            scope = nncf.IgnoredScope(names=embedding[1]) if embedding else None
            with library_stdout():  # NNCF's progress bar: not on the user's stdout
                out = nncf.compress_weights(model, mode=mode, ignored_scope=scope)
            asked = {"mode": cfg.int8_mode, "int8_embedding": cfg.int8_embedding}
            if embedding:
                _store_fp16(embedding[0])
                asked["fp16_layers"] = [_short(embedding[0].get_friendly_name())]
        elif precision == "int4":
            mode = nncf.CompressWeightsMode(cfg.int4_mode)
            adv = AdvancedCompressionParameters(group_size_fallback_mode=GroupSizeFallbackMode(cfg.group_size_fallback))
            with library_stdout():
                out = nncf.compress_weights(model, mode=mode, group_size=cfg.group_size, ratio=cfg.ratio,
                                            all_layers=cfg.all_layers, backup_mode=nncf.BackupMode(cfg.backup_mode),
                                            advanced_parameters=adv)
            asked = {k: v for k, v in asdict(cfg).items() if k not in ("int8_mode", "int8_embedding")}
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


def _embedding_ops(model):
    """(the embedding table's Constant, names of the ops reading it) or None.

    The table is the f32 Constant a Gather looks rows up in; with tied embeddings the lm_head
    MatMul reads the same Constant. NNCF must skip all of them, or it compresses the shared table.
    """
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Gather":
            continue
        table = op.input_value(0).get_node()
        if table.get_type_name() == "Constant" and table.get_element_type().get_type_name() == "f32" \
                and len(table.get_output_shape(0)) == 2:
            readers = [t.get_node().get_friendly_name() for t in table.output(0).get_target_inputs()]
            return table, readers
    return None


def _store_fp16(table) -> None:
    """Replace an f32 Constant by an f16 Constant + Convert to f32 (half the bytes, same graph)."""
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops

    name = table.get_friendly_name()
    half = ops.constant(table.get_data().astype(np.float16))
    half.set_friendly_name(name)
    up = ops.convert(half, ov.Type.f32)
    for target in list(table.output(0).get_target_inputs()):
        target.replace_source_output(up.output(0))


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
