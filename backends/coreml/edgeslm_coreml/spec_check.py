"""Read a saved .mlpackage back on Linux and prove what it is, without predicting.

``inspect_package`` loads the package's spec (``ct.utils.load_spec``) and its MIL program
(weights included) and reports: specification version, inputs/outputs/states with shapes and
types, op-type counts, the compressed-weight ops (``constexpr_blockwise_shift_scale`` for
linear quantization, ``constexpr_lut_to_dense`` for palettization) with their storage dtype and
block size, the dtype the linear layers compute in, and bytes on disk. ``check_package``
compares that with what an export promised and returns the problems found (empty = passed).
``stored_weights`` returns every weight as the package stores it, dequantized, under its
Hugging Face name, so the torch module can run with exactly those values.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

from .convert import CAUSAL_MASK, INPUT_IDS, IOS18_SPEC_VERSION, KEY_CACHE, LOGITS, VALUE_CACHE, quiet_coremltools

COMPRESSION_OPS = ("constexpr_blockwise_shift_scale", "constexpr_lut_to_dense", "constexpr_sparse_to_dense",
                   "constexpr_affine_dequantize", "constexpr_lut_to_sparse", "constexpr_sparse_blockwise_shift_scale")
_ARRAY_TYPES = {65568: "fp32", 65552: "fp16", 131104: "int32"}  # ArrayFeatureType.ArrayDataType values


def _feature(f) -> dict[str, Any]:
    kind = f.type.WhichOneof("Type")
    if kind == "stateType":
        arr = f.type.stateType.arrayType
    elif kind == "multiArrayType":
        arr = f.type.multiArrayType
    else:
        return {"name": f.name, "kind": kind}
    out = {"name": f.name, "shape": list(arr.shape), "dtype": _ARRAY_TYPES.get(arr.dataType, str(arr.dataType))}
    if kind == "multiArrayType" and arr.WhichOneof("ShapeFlexibility") == "shapeRange":
        out["range"] = [[r.lowerBound, r.upperBound] for r in arr.shapeRange.sizeRanges]
    return out


def package_bytes(path: str | Path) -> dict[str, int]:
    path = Path(path)
    files = [p for p in path.rglob("*") if p.is_file()]
    weights = sum(p.stat().st_size for p in files if p.parent.name == "weights")
    return {"package": sum(p.stat().st_size for p in files), "weights": weights}


def load_program(path: str | Path):
    """(spec, MIL program) of a saved package; works on Linux (no Core ML framework needed)."""
    ct = quiet_coremltools()
    from coremltools.converters.mil.frontend.milproto import load as milproto
    from coremltools.models.utils import _convert_model_spec_to_pymil_prog

    model = ct.models.MLModel(str(path), skip_model_load=True)
    spec = model.get_spec()
    return spec, _convert_model_spec_to_pymil_prog(model, spec.specificationVersion, milproto.load)


def inspect_package(path: str | Path) -> dict[str, Any]:
    from coremltools.converters.mil.mil import types

    spec, prog = load_program(path)
    ops = [op for f in prog.functions.values() for op in f.operations]
    counts = Counter(op.op_type for op in ops)
    compressed = []
    for op in ops:
        if op.op_type not in COMPRESSION_OPS:
            continue
        data = op.inputs.get("data", op.inputs.get("indices"))
        entry = {"name": _prefix(op.name), "op": op.op_type, "shape": list(op.outputs[0].shape),
                 "storage": types.builtin_to_string(data.dtype) if data is not None else None}
        if op.op_type == "constexpr_blockwise_shift_scale":
            entry["block"] = [int(d // s) for d, s in zip(op.data.shape, op.scale.shape)]
        compressed.append(entry)
    linear_dtypes = sorted({types.builtin_to_string(op.outputs[0].dtype) for op in ops if op.op_type == "linear"})
    desc = spec.description
    return {
        "specification_version": spec.specificationVersion,
        "model_type": spec.WhichOneof("Type"),
        "inputs": [_feature(f) for f in desc.input],
        "outputs": [_feature(f) for f in desc.output],
        "states": [_feature(f) for f in desc.state],
        "op_counts": dict(sorted(counts.items())),
        "compressed_weights": {"count": len(compressed),
                               "ops": dict(Counter(c["op"] for c in compressed)),
                               "storage": dict(Counter(c["storage"] for c in compressed)),
                               "blocks": sorted({tuple(c["block"]) for c in compressed if "block" in c})},
        "linear_compute_dtype": linear_dtypes,
        "bytes": package_bytes(path),
        "_compressed": compressed,  # per-weight detail, dropped before the manifest
    }


def expected_weights(model_spec, weight_threshold: int = 0) -> int:
    """Weights the compression passes cover: the linear and embedding matrices larger than
    ``weight_threshold`` elements (every linear of every layer as the description lists them,
    fused or not, low-rank factors as their two matrices; the embedding; the head if untied)."""
    desc = model_spec.description
    ranks = model_spec.extra.get("low_rank") or {}
    sizes = []
    for i in range(desc.num_layers):
        for name in desc.linear_names(i):
            fan_in, fan_out = desc.linear_shape(i, name)
            rank = ranks.get(f"model.layers.{i}.{name}")
            sizes += [int(rank) * fan_in, int(rank) * fan_out] if rank else [fan_in * fan_out]
    sizes += [desc.vocab_size * desc.hidden_size] * (1 if desc.tie_word_embeddings else 2)
    return sum(n > weight_threshold for n in sizes)


def check_package(info: dict[str, Any], model_spec, context_length: int, precision: str,
                  block_size: int = 32, weight_threshold: int = 2048) -> list[str]:
    """Everything the export promised, checked against ``inspect_package``'s report."""
    problems = []
    s = model_spec
    if info["model_type"] != "mlProgram":
        problems.append(f"not an ML Program: {info['model_type']}")
    if info["specification_version"] < IOS18_SPEC_VERSION:
        problems.append(f"specification version {info['specification_version']} < {IOS18_SPEC_VERSION} (iOS 18)")
    ins = {f["name"]: f for f in info["inputs"]}
    if set(ins) != {INPUT_IDS, CAUSAL_MASK}:
        problems.append(f"inputs {sorted(ins)} != {[INPUT_IDS, CAUSAL_MASK]}")
    else:
        if ins[INPUT_IDS]["dtype"] != "int32" or ins[INPUT_IDS].get("range") != [[1, 1], [1, context_length]]:
            problems.append(f"input_ids is {ins[INPUT_IDS]}, expected int32 (1, 1..{context_length})")
        if ins[CAUSAL_MASK]["dtype"] != "fp16" or len(ins[CAUSAL_MASK].get("range", [])) != 4:
            problems.append(f"causal_mask is {ins[CAUSAL_MASK]}, expected fp16 (1, 1, seq, end)")
    outs = {f["name"]: f for f in info["outputs"]}
    if list(outs) != [LOGITS]:
        problems.append(f"outputs {list(outs)} != ['{LOGITS}']")
    cache = [s.num_layers, 1, s.num_kv_heads, context_length, s.head_dim]
    states = {f["name"]: f for f in info["states"]}
    for name in (KEY_CACHE, VALUE_CACHE):
        st = states.get(name)
        if st is None or st["shape"] != cache or st["dtype"] != "fp16":
            problems.append(f"state {name} is {st}, expected fp16 {cache}")
    ops = info["op_counts"]
    for op in ("read_state", "coreml_update_state", "slice_update", "softmax"):
        if not ops.get(op):
            problems.append(f"no '{op}' op in the program")
    if info["linear_compute_dtype"] != ["fp16"]:
        problems.append(f"linear layers compute in {info['linear_compute_dtype']}, expected fp16")
    comp, want = info["compressed_weights"], expected_weights(s, weight_threshold)
    expect = {"fp16": (None, None), "int8": ("constexpr_blockwise_shift_scale", "int8"),
              "int4": ("constexpr_blockwise_shift_scale", "int4"), "palettized": ("constexpr_lut_to_dense", None)}
    op, storage = expect[precision]
    if op is None:
        if comp["count"]:
            problems.append(f"fp16 package has {comp['count']} compressed weights")
    else:
        if comp["ops"] != {op: want}:
            problems.append(f"compressed weights {comp['ops']}, expected {{'{op}': {want}}}")
        if storage and comp["storage"] != {storage: want}:
            problems.append(f"weight storage {comp['storage']}, expected {storage}")
        if precision == "int4" and comp["blocks"] and any(b[-1] != block_size for b in comp["blocks"]):
            problems.append(f"int4 blocks {comp['blocks']}, expected {block_size} along the input axis")
    return problems


def stored_weights(path: str | Path, names) -> dict[str, Any]:
    """{torch weight name: float32 array} for each of ``names`` the package stores as a weight
    (dequantized from its constexpr op, or its fp16 const); names it does not store are absent."""
    import numpy as np

    by_prefix = {n.replace(".", "_"): n for n in names}
    _, prog = load_program(path)
    out = {}
    for op in (op for f in prog.functions.values() for op in f.operations):
        name = by_prefix.get(_prefix(op.name))
        if name is None:
            continue
        if op.op_type in COMPRESSION_OPS:
            val = op.materialized_val_inference()
        elif op.op_type == "const":
            val = op.outputs[0].val
        else:
            continue
        out[name] = np.asarray(val, dtype=np.float32)
    return out


def _prefix(op_name: str) -> str:
    """'model_layers_0_mlp_up_proj_weight_to_fp16_quantized' -> 'model_layers_0_mlp_up_proj_weight'."""
    return re.sub(r"_to_fp16.*$", "", op_name)
