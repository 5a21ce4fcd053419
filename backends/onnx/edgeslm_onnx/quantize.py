"""Weight quantization of an exported ONNX decoder, with onnxruntime's own kernels.

Precisions (names as the exporter declares them):

- ``int8``       every MatMul weight -> MatMulNBits 8-bit (block 32, asymmetric uint8); the
                 embedding -> GatherBlockQuantized 8-bit. Weight-only: activations stay fp32.
- ``int4``       MatMulNBits 4-bit, block 32, asymmetric, re-quantized from the float weights
                 (onnxruntime's MatMulNBitsQuantizer); embedding and lm_head kept at 8-bit.
- ``int4-gguf``  *transcoded*, not re-quantized: each Q4_1 block of the GGUF (scale d, minimum
                 m, 32 4-bit codes) becomes a MatMulNBits block with scale d and float zero
                 point -m/d, so  d*(q - (-m/d)) = d*q + m  — the GGUF's own weights, to float
                 rounding. Q8_0 tensors (SmolLM2's tied embedding / lm_head) become 8-bit
                 blocks with zero point 128. No weight is quantized twice.

MatMul weights are found by content, not by name: the dynamo exporter folds each Linear's
transpose into an anonymous initializer of shape (in, out).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

BLOCK = 32
MS = "com.microsoft"


@dataclass
class QuantReport:
    precision: str
    matmuls_quantized: int = 0
    matmuls_kept_float: int = 0
    embedding: str = "fp32"
    lm_head: str = "fp32"
    block_size: int = BLOCK
    max_abs_weight_error: float | None = None  # transcoding: |ONNX dequantized - GGUF dequantized|
    details: dict[str, Any] = field(default_factory=dict)


# -- graph helpers ---------------------------------------------------------------------------

def _inits(model):
    return {i.name: i for i in model.graph.initializer}


def _array(init) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(init)


def _add_init(model, name: str, arr: np.ndarray) -> str:
    from onnx import numpy_helper

    model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
    return name


def _drop_unused_initializers(model) -> None:
    used = {i for n in model.graph.node for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def _ensure_ms_opset(model) -> None:
    if not any(o.domain == MS for o in model.opset_import):
        model.opset_import.append(__import__("onnx").helper.make_opsetid(MS, 1))


def untie_lm_head(model) -> str | None:
    """Replace the lm_head ``Gemm(x, E, transB=1)`` on the shared embedding E by a plain MatMul
    on its own (in, vocab) initializer, so weight quantizers see it. Returns the new name."""
    from onnx import helper

    inits = _inits(model)
    for idx, node in enumerate(model.graph.node):
        if node.op_type != "Gemm" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transB", 0) != 1 or attrs.get("transA", 0) != 0 or len(node.input) > 2:
            continue
        w = _array(inits[node.input[1]])  # (vocab, hidden)
        name = _add_init(model, "lm_head.weight.T", w.T.astype(np.float32))  # (hidden, vocab)
        model.graph.node[idx].CopyFrom(helper.make_node("MatMul", [node.input[0], name], list(node.output),
                                                        name="lm_head_matmul"))
        return name
    return None


def _matmul_nbits(model, node_idx: int, a: str, q_packed: np.ndarray, scales: np.ndarray, zp: np.ndarray,
                  k: int, n: int, bits: int, accuracy_level: int) -> None:
    from onnx import helper

    node = model.graph.node[node_idx]
    base = f"{node.output[0]}_nbits"
    ins = [a, _add_init(model, base + "_B", q_packed), _add_init(model, base + "_scales", scales.reshape(-1)),
           _add_init(model, base + "_zp", zp.reshape(-1))]
    model.graph.node[node_idx].CopyFrom(helper.make_node(
        "MatMulNBits", ins, list(node.output), name=base, domain=MS, K=k, N=n, bits=bits, block_size=BLOCK,
        accuracy_level=accuracy_level))


def _pack4(q: np.ndarray) -> np.ndarray:
    """(N, blocks, 32) codes 0..15 -> (N, blocks, 16) bytes, element 2i in the low nibble."""
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def quantize_embedding_8bit(model, weight_name: str, codes: np.ndarray | None = None,
                            scales: np.ndarray | None = None) -> bool:
    """Gather on ``weight_name`` -> GatherBlockQuantized 8-bit, zero point 128 (symmetric)."""
    from onnx import helper

    inits = _inits(model)
    for idx, node in enumerate(model.graph.node):
        if node.op_type == "Gather" and node.input[0] == weight_name:
            if codes is None:
                w = _array(inits[weight_name]).astype(np.float32)  # (vocab, hidden)
                codes, scales = _symmetric_blocks(w, 8)
            v, d = codes.shape[0], codes.shape[1] * codes.shape[2]
            ins = [_add_init(model, weight_name + "_q8", codes.reshape(v, d)), node.input[1],
                   _add_init(model, weight_name + "_q8_scales", scales.reshape(v, -1)),
                   _add_init(model, weight_name + "_q8_zp", np.full((v, d // BLOCK), 128, np.uint8))]
            model.graph.node[idx].CopyFrom(helper.make_node(
                "GatherBlockQuantized", ins, list(node.output), name="embed_q8", domain=MS,
                gather_axis=0, quantize_axis=1, block_size=BLOCK, bits=8))
            return True
    return False


def _symmetric_blocks(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) float -> uint8 codes (rows, cols/32, 32) with zero point 2^(bits-1), scales."""
    rows, cols = w.shape
    blocks = w.reshape(rows, cols // BLOCK, BLOCK)
    qmax = 2 ** (bits - 1) - 1
    scales = np.abs(blocks).max(-1) / qmax
    scales[scales == 0] = 1.0
    q = np.clip(np.rint(blocks / scales[..., None]), -qmax - 1, qmax) + 2 ** (bits - 1)
    return q.astype(np.uint8), scales.astype(np.float32)


# -- re-quantization -------------------------------------------------------------------------

def requantize(model, bits: int, accuracy_level: int = 4) -> tuple[Any, QuantReport]:
    """Weight-only blockwise quantization of every MatMul with onnxruntime's quantizer."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    report = QuantReport(precision=f"int{bits}")
    emb = next((n.input[0] for n in model.graph.node if n.op_type == "Gather" and n.input[0] in _inits(model)), None)
    lm_head = untie_lm_head(model)
    exclude = []
    if bits == 4 and lm_head:
        # lm_head stays 8-bit: its errors land directly on every logit.
        idx = next(i for i, n in enumerate(model.graph.node) if n.name == "lm_head_matmul")
        w = _array(_inits(model)[lm_head])  # (hidden, vocab)
        codes, scales = _symmetric_blocks(np.ascontiguousarray(w.T), 8)  # (vocab, hidden/32, 32)
        _ensure_ms_opset(model)
        _matmul_nbits(model, idx, model.graph.node[idx].input[0], codes, scales,
                      np.full(scales.shape, 128, np.uint8), w.shape[0], w.shape[1], 8, accuracy_level)
        exclude.append(model.graph.node[idx].name)
        report.lm_head = "int8"
    q = MatMulNBitsQuantizer(model, bits=bits, block_size=BLOCK, is_symmetric=False, accuracy_level=accuracy_level,
                             nodes_to_exclude=exclude)
    q.process()
    model = q.model.model
    if lm_head and bits == 8:
        report.lm_head = "int8"
    if emb is not None and quantize_embedding_8bit(model, emb):
        report.embedding = "int8"
    _drop_unused_initializers(model)
    report.matmuls_quantized = sum(n.op_type == "MatMulNBits" for n in model.graph.node)
    report.matmuls_kept_float = sum(n.op_type == "MatMul" and n.input[1] in _inits(model) for n in model.graph.node)
    return model, report


# -- GGUF transcoding ------------------------------------------------------------------------

def _digest(arr: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(arr, dtype=np.float32).tobytes()).hexdigest()


def _row_perm(name: str, rows: int, n_head: int, n_kv: int) -> np.ndarray | None:
    """Row order that undoes llama.cpp's Q/K permutation (as transformers does on load)."""
    if ".attn_q." in name:
        heads = n_head
    elif ".attn_k." in name:
        heads = n_kv
    else:
        return None
    idx = np.arange(rows)
    return idx.reshape(heads, rows // heads // 2, 2).swapaxes(2, 1).reshape(rows)


def gguf_blocks(gguf_path: str, n_head: int, n_kv: int):
    """Yield (name, type, codes (N, blocks, 32) uint8, scales (N, blocks), zero points (N, blocks),
    dequantized (N, K) float32) for every Q4_1 / Q8_0 matrix, rows in Hugging Face order (Q/K
    rows un-permuted where llama.cpp permuted them: the families whose ``gguf_fix`` undoes it)."""
    from edgeslm.arch.gguf_common import unpermute_qk
    from edgeslm.sources.gguf import gguf_family
    from edgeslm.sources.gguf_file import GGUFFile
    from edgeslm.sources.gguf_quants import dequantize

    reader = GGUFFile(gguf_path)
    permuted = gguf_family(reader.architecture).gguf_fix is unpermute_qk
    for t in reader.tensors.values():
        qtype = t.type_name
        if qtype not in ("Q4_1", "Q8_0") or len(t.shape) != 2:
            continue
        n = t.shape[0]
        raw = reader.raw(t.name).reshape(n, -1)  # (N, bytes per row)
        if qtype == "Q4_1":
            blk = raw.reshape(n, -1, 20)
            d = blk[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
            m = blk[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
            qs = blk[..., 4:20]
            codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # low nibbles = elements 0..15
            zp = -m / d
            zp[d == 0] = 0.0
            scales = d
        else:
            blk = raw.reshape(n, -1, 34)
            scales = blk[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
            codes = (blk[..., 2:34].copy().view(np.int8).astype(np.int16) + 128).astype(np.uint8)
            zp = np.full(scales.shape, 128.0, np.float32)
        deq = dequantize(raw, qtype, t.shape)  # (N, K) float32, bit-identical to gguf-py's
        perm = _row_perm(t.name, n, n_head, n_kv) if permuted else None
        if perm is not None:
            codes, scales, zp, deq = codes[perm], scales[perm], zp[perm], deq[perm]
        yield t.name, qtype, codes, scales, zp, deq


def transcode_gguf(model, gguf_path: str, n_head: int, n_kv: int, accuracy_level: int = 4) -> tuple[Any, QuantReport]:
    """Replace every MatMul/Gather whose weight is a dequantized GGUF tensor by its own blocks.

    Q4_1 (``w = d*q + m`` per block of 32) is written as onnxruntime's fast symmetric 4-bit
    kernel plus an exact per-block offset term::

        y = x @ W.T = MatMulNBits(x; codes, d, zero point 8)  +  blocksum(x) @ C.T
        C[n, b] = m[n, b] + 8 * d[n, b]            blocksum(x)[b] = sum of x over block b

    because ``d*q + m = d*(q - 8) + (m + 8d)``. (MatMulNBits also accepts float zero points,
    which state ``-m/d`` directly, but onnxruntime's CPU kernels then fall back to a path
    measured ~35x slower.) The block sums of one input are computed once and shared by the
    projections that read it (q/k/v, gate/up).
    """
    from edgeslm.errors import ExportError

    report = QuantReport(precision="int4-gguf")
    untie_lm_head(model)
    _ensure_ms_opset(model)
    nodes = list(model.graph.node)
    by_digest, gather_digest = _weights_by_content(model, nodes)
    max_err = 0.0
    kinds: dict[str, int] = {}
    replace: dict[int, list] = {}  # node index -> the nodes that take its place
    blocksum_of: dict[str, tuple[int, str]] = {}  # input name -> (first consumer index, block-sum output)
    for name, qtype, codes, scales, zp, deq in gguf_blocks(gguf_path, n_head, n_kv):
        key = _digest(deq)
        for idx in by_digest.pop(key, []):
            if qtype == "Q4_1":
                replace[idx], back = _q4_1_matmul(model, nodes[idx], idx, codes, scales, zp, deq, blocksum_of,
                                                  accuracy_level)
            else:
                replace[idx], back = _q8_0_matmul(model, nodes[idx], codes, scales, deq, accuracy_level)
            max_err = max(max_err, float(np.abs(back - deq).max()))  # what the graph computes vs the GGUF
            kinds[qtype] = kinds.get(qtype, 0) + 1
            if name.startswith(("token_embd", "output.")):
                report.lm_head = f"gguf-{qtype}"
        if key in gather_digest and qtype == "Q8_0":
            quantize_embedding_8bit(model, gather_digest[key], codes, scales)
            nodes = list(model.graph.node)  # the Gather was rewritten in place
            report.embedding = "gguf-Q8_0"
    if not kinds:
        raise ExportError(f"{gguf_path}: no Q4_1/Q8_0 tensor of the GGUF matches a weight of the export; "
                          "int4-gguf needs the unmodified GGUF as the source")
    _splice(model, nodes, _blocksum_nodes(model, blocksum_of), replace)
    _drop_unused_initializers(model)
    report.matmuls_quantized = sum(kinds.values())
    report.matmuls_kept_float = sum(len(v) for v in by_digest.values())
    report.max_abs_weight_error = max_err
    report.details = {"gguf_tensors_mapped": kinds, "q4_1_as": "symmetric 4-bit MatMulNBits + exact per-block offset"}
    return model, report


def _weights_by_content(model, nodes: list) -> tuple[dict[str, list[int]], dict[str, str]]:
    """(digest of each constant MatMul weight as (out, in) -> node indices, digest of each
    constant Gather table -> its initializer name): weights are found by content, not name."""
    inits = _inits(model)
    by_digest: dict[str, list[int]] = {}
    for idx, node in enumerate(nodes):
        if node.op_type == "MatMul" and node.input[1] in inits:
            by_digest.setdefault(_digest(_array(inits[node.input[1]]).T), []).append(idx)
    gathers = {n.input[0] for n in nodes if n.op_type == "Gather" and n.input[0] in inits}
    return by_digest, {_digest(_array(inits[name])): name for name in gathers}


def _q4_1_matmul(model, node, idx: int, codes, scales, zp, deq, blocksum_of: dict, accuracy_level: int):
    """One Q4_1 MatMul as MatMulNBits (zero point 8) + blocksum(x) @ (m + 8d).T; notes in
    ``blocksum_of`` the block sum its input needs. Returns (nodes, the weight they compute)."""
    from onnx import helper

    a, y = node.input[0], node.output[0]
    base = f"{y}_gguf"
    n_out, k = deq.shape
    offset = scales * (8.0 - zp)  # m + 8d, (N, blocks)
    back = ((codes.astype(np.float32) - 8.0) * scales[..., None] + offset[..., None]).reshape(deq.shape)
    ins = [a, _add_init(model, base + "_B", _pack4(codes)), _add_init(model, base + "_scales", scales.reshape(-1))]
    first, bsum = blocksum_of.get(a, (idx, f"{a}_blocksum{k // BLOCK}"))
    blocksum_of[a] = (min(first, idx), bsum)
    return [
        helper.make_node("MatMulNBits", ins, [base + "_q"], name=base, domain=MS, K=k, N=n_out, bits=4,
                         block_size=BLOCK, accuracy_level=accuracy_level),
        helper.make_node("MatMul", [bsum, _add_init(model, base + "_offsetT", offset.T.astype(np.float32))],
                         [base + "_offset"], name=base + "_offset"),  # (rows, N)
        helper.make_node("Add", [base + "_q", base + "_offset"], [y], name=base + "_add"),  # broadcast over batch 1
    ], back


def _q8_0_matmul(model, node, codes, scales, deq, accuracy_level: int):
    """One Q8_0 MatMul as symmetric 8-bit MatMulNBits (zero point 128 in uint8 codes). Returns
    (nodes, the weight they compute)."""
    from onnx import helper

    a, y = node.input[0], node.output[0]
    base = f"{y}_gguf"
    n_out, k = deq.shape
    back = ((codes.astype(np.float32) - 128.0) * scales[..., None]).reshape(deq.shape)
    ins = [a, _add_init(model, base + "_B", codes), _add_init(model, base + "_scales", scales.reshape(-1)),
           _add_init(model, base + "_zp", np.full(scales.shape, 128, np.uint8).reshape(-1))]
    return [helper.make_node("MatMulNBits", ins, [y], name=base, domain=MS, K=k, N=n_out, bits=8,
                             block_size=BLOCK, accuracy_level=accuracy_level)], back


def _blocksum_nodes(model, blocksum_of: dict[str, tuple[int, str]]) -> dict[int, list]:
    """node index -> the Reshape + ReduceSum nodes that compute, before it, the per-block sums of
    an input its Q4_1 offset terms read (once per input, shared by its readers)."""
    from onnx import helper

    shape_init = {}
    before: dict[int, list] = {}
    for a, (first, bsum) in blocksum_of.items():
        nb = int(bsum.rsplit("blocksum", 1)[1])
        if nb not in shape_init:
            shape_init[nb] = _add_init(model, f"blocksum_shape_{nb}", np.array([-1, nb, BLOCK], np.int64))
            if "blocksum_axes" not in _inits(model):
                _add_init(model, "blocksum_axes", np.array([-1], np.int64))
        before.setdefault(first, []).extend([
            helper.make_node("Reshape", [a, shape_init[nb]], [bsum + "_blocks"], name=bsum + "_reshape"),  # (rows, nb, 32)
            helper.make_node("ReduceSum", [bsum + "_blocks", "blocksum_axes"], [bsum], name=bsum, keepdims=0),  # (rows, nb)
        ])
    return before


def _splice(model, nodes: list, before: dict[int, list], replace: dict[int, list]) -> None:
    """The graph's nodes in order, with ``before[i]`` ahead of node i and ``replace[i]`` in its place."""
    out = []
    for idx, node in enumerate(nodes):
        out.extend(before.get(idx, []))
        out.extend(replace.get(idx, [node]))
    del model.graph.node[:]
    model.graph.node.extend(out)
