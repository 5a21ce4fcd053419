"""The graph-writer export: a source model's description + weights -> ``model.onnx`` (no torch.onnx)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from edgeslm._deps import require
from edgeslm.errors import ExportError

from .graph_writer import DecoderWriter, Unsupported

MODEL_FILE = "model.onnx"
PRECISIONS = ("fp32", "int4-gguf", "int4-minmax")


def write_graph(source, spec, out_dir: Path, steps) -> dict[str, Any]:
    """Write the bundle's model files; :class:`Unsupported` when the writer cannot (the caller
    falls back to the torch export or reports it)."""
    onnx = require("onnx", "onnx", "ONNX export")
    if spec.precision not in PRECISIONS:
        raise Unsupported(f"precision {spec.precision} (the writer does {', '.join(PRECISIONS)}; "
                          "re-quantized int8/int4 go through the torch graph)")
    if source.spec.extra.get("low_rank"):
        raise Unsupported("low-rank factorized linears")
    cfg = source.spec.description
    if cfg is None:
        raise Unsupported("the source has no decoder description")
    accuracy_level = int(spec.options.get("accuracy_level", 4))
    t0 = time.perf_counter()
    state = {k: v.detach().float().numpy() for k, v in source.module.state_dict().items()}
    weights = _weights(source, spec, state, steps)
    with steps.step("Writing the ONNX graph (graph writer)"):
        offsets = str(spec.options.get("q4_1_offsets", "rows"))
        if offsets not in DecoderWriter.OFFSETS:
            raise ExportError(f"option q4_1_offsets={offsets!r}: expected one of {', '.join(DecoderWriter.OFFSETS)}")
        writer = DecoderWriter(cfg, weights, spec.context_length, accuracy_level, offsets)
        try:
            model = writer.model()
        except KeyError as exc:  # a weight the description promises is missing
            raise Unsupported(f"weight {exc} not in the model's state dict") from exc
        path = out_dir / MODEL_FILE
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=MODEL_FILE + ".data", size_threshold=1024)
    files = sorted(p.name for p in out_dir.iterdir())
    ops: dict[str, int] = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    out: dict[str, Any] = {"artifacts": {"model": MODEL_FILE, "files": files, "opset": 21,
                                         "graph": {"kind": "writer", "kv_cache": "shared-buffer",
                                                   "max_length": spec.context_length, "nodes": len(model.graph.node),
                                                   "ops": ops, "seconds": round(time.perf_counter() - t0, 1)}}}
    if writer.custom_ops:  # the graph needs edgeslm's custom-op library on every session (engine.py)
        from . import kernels

        out["artifacts"]["custom_ops"] = {"domain": kernels.DOMAIN, "ops": dict(writer.custom_ops),
                                          "library": "edgeslm_onnx.kernels (compiled with gcc at first load)",
                                          "sources": kernels.source_hash()}
    if spec.precision in ("int4-gguf", "int4-minmax"):
        out["quantization"] = _quantization(spec, cfg, writer, weights, accuracy_level)
    return out


def _weights(source, spec, state: dict, steps):
    """The writer's weights for the precision: the GGUF's own blocks (int4-gguf), float weights
    quantized here into the same blocks (int4-minmax), or the float matrices."""
    if spec.precision == "int4-gguf":
        if source.kind != "gguf":
            raise ExportError("precision int4-gguf transcodes a GGUF's own 4-bit blocks; the source is not a GGUF "
                              "file (use int4 to quantize float weights)")
        from .gguf_blocks import LAYOUTS
        from .weights import GgufWeights

        with steps.step("Reading the GGUF's blocks"):
            weights = GgufWeights(state, str(source.path), source.spec.num_heads, source.spec.num_kv_heads)
        if weights.untranscodable:
            qtype, names = next(iter(weights.untranscodable.items()))
            raise ExportError(f"{source.path}: int4-gguf cannot transcode {qtype} blocks ({len(names)} tensors, "
                              f"e.g. '{names[0]}'; it transcodes {', '.join(LAYOUTS)}); use -p int4 to re-quantize "
                              "the dequantized weights")
        if not weights.kinds:
            raise ExportError(f"{source.path}: no quantized tensor of the GGUF ({', '.join(LAYOUTS)}) matches a "
                              "weight of the model; int4-gguf needs the unmodified GGUF as the source")
    elif spec.precision == "int4-minmax":
        from .weights import MinMaxWeights

        weights = MinMaxWeights(state)
    else:
        from .weights import FloatWeights

        weights = FloatWeights(state)
    return weights


def _quantization(spec, cfg, writer: DecoderWriter, weights, accuracy_level: int) -> dict[str, Any]:
    """The manifest's ``quantization`` record of a block-weight export."""
    kinds = writer.counts
    head = "model.embed_tokens" if cfg.tie_word_embeddings else "lm_head"
    gguf = spec.precision == "int4-gguf"
    return {
        "precision": spec.precision, "accuracy_level": accuracy_level,
        "block_size": min((b.block for b in weights.blocks.values()), default=32),
        "block_sizes": {b.qtype: b.block for b in weights.blocks.values()},
        "matmuls_quantized": sum(v for k, v in kinds.items() if k.startswith(("MatMulNBits", "Q41MatMul", "Q80MatMul"))),
        "matmuls_kept_float": kinds.get("MatMul fp32", 0),
        "embedding": _kind(weights, "model.embed_tokens", spec.precision),
        "lm_head": _kind(weights, head, spec.precision),
        "max_abs_weight_error": weights.max_abs_error,
        "q4_1_offsets": writer.offsets if any(b.offset is not None for b in weights.blocks.values()) else None,
        "details": {("gguf_tensors_mapped" if gguf else "tensors_quantized"): weights.kinds, "kernels": kinds,
                    "gguf_as": ("each GGUF block type" if gguf else "float weights quantized to Q4_1 (decoder linears) "
                                "and Q8_0 (embedding, lm_head) blocks, each")
                    + " as MatMulNBits 4/8-bit codes (+ exact per-block offset for Q4_1/Q5_1/Q4_K/Q5_K); q/k/v and "
                      "gate/up packed where one layout; a tied embedding shares the lm_head's codes"}}


def _kind(weights, name: str, precision: str = "int4-gguf") -> str:
    blk = weights.blocks.get(name)
    return ("gguf-" if precision == "int4-gguf" else "") + blk.qtype if blk is not None else "fp32"
