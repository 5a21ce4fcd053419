"""ONNX weight quantization: int8 / int4 re-quantized, and int4-gguf transcoded from GGUF blocks."""

import collections

import numpy as np
import pytest

import edgeslm
from edgeslm.errors import ExportError
from edgeslm.exporting import export_model
from edgeslm.testing import requires_export

pytestmark = requires_export


def op_counts(bundle):
    import onnx

    m = onnx.load(str(bundle / "model.onnx"), load_external_data=False)
    return collections.Counter(n.op_type for n in m.graph.node)


@pytest.fixture(scope="module")
def gguf_q4_source(tiny_gguf_q4):
    from edgeslm.sources import load_source

    return load_source(tiny_gguf_q4)


@pytest.mark.parametrize("precision,bits", [("int8", 8), ("int4", 4)])
def test_requantized_graph_uses_nbits_kernels(bundle_factory, precision, bits):
    b = bundle_factory("onnx", precision)
    ops = op_counts(b)
    layers, per_layer = 2, 7  # q k v o gate up down
    assert ops["MatMulNBits"] == layers * per_layer + 1  # + lm_head
    assert ops["GatherBlockQuantized"] == 1  # 8-bit embedding
    q = edgeslm.load(b).bundle.manifest["quantization"]
    assert q["matmuls_kept_float"] == 0 and q["embedding"] == "int8" and q["lm_head"] == "int8"
    fp32 = bundle_factory("onnx")
    assert edgeslm.load(b).bundle.bytes < edgeslm.load(fp32).bundle.bytes


@pytest.mark.parametrize("graph,matmuls,blocksums", [("writer", 2 * 4 + 1, {"MatMul": 2 * 4, "Split": 2 * 4 + 2,
                                                                            "ReduceSum": 0}),
                                                     ("torch", 15, {"ReduceSum": 2 * 4})])
def test_transcoded_gguf_is_the_gguf(gguf_q4_source, tmp_path, graph, matmuls, blocksums):
    # accuracy_level 0 computes in fp32, so parity isolates the weights; the default (4, int8
    # activations) is measured on SmolLM2 instead (random tiny weights make its logits near-ties).
    # The writer packs q/k/v and gate/up: 4 MatMulNBits per layer + lm_head; torch's graph 7 + 1.
    b = export_model(gguf_q4_source, tmp_path / "t", format="onnx", precision="int4-gguf", context_length=128,
                     parity_tokens=8, options={"accuracy_level": 0, "graph": graph})
    assert b.manifest["artifacts"]["graph"]["kind"] == graph
    q = b.manifest["quantization"]
    assert q["details"]["gguf_tensors_mapped"] == {"Q4_1": 14, "Q8_0": 1}
    assert q["matmuls_kept_float"] == 0 and q["embedding"] == "gguf-Q8_0" and q["lm_head"] == "gguf-Q8_0"
    assert q["max_abs_weight_error"] < 1e-5  # the graph holds the GGUF's own weights
    p = b.manifest["parity"]
    assert p["passed"] and p["top1_agreement"] >= 0.97
    ops = op_counts(b.path)
    # block sums: 4 distinct inputs per layer; the writer's default (q4_1_offsets=rows) gets them as
    # extra output rows of each MatMulNBits (a Split each, + gate/up's own Split), then the offset MatMul
    assert q.get("q4_1_offsets") == ("rows" if graph == "writer" else None)
    assert ops["MatMulNBits"] == matmuls and {k: ops[k] for k in blocksums} == blocksums


@pytest.mark.parametrize("graph, mapped", [("torch", 15), ("writer", 16)])  # the writer maps the embedding too
def test_transcoding_follows_the_family_conventions(tmp_path, graph, mapped):
    """A Qwen2 GGUF has no Q/K row permutation (only llama.cpp's llama files do): every matrix,
    q/k included, is still found and transcoded."""
    from edgeslm.sources import load_source
    from edgeslm.testing_gguf import make_family_gguf

    tg = make_family_gguf(tmp_path / "qwen2-q4_1.gguf", "qwen2", types=("Q4_1",))
    b = export_model(load_source(tg.path), tmp_path / "t", format="onnx", precision="int4-gguf", context_length=64,
                     parity_tokens=4, options={"accuracy_level": 0, "graph": graph})
    assert b.manifest["artifacts"]["graph"]["kind"] == graph
    q = b.manifest["quantization"]
    assert q["details"]["gguf_tensors_mapped"] == {"Q4_1": mapped} and q.get("matmuls_kept_float", 0) == 0
    assert b.manifest["parity"]["top1_agreement"] == 1.0


def test_transcoded_matmul_matches_dequantized_gguf(gguf_q4_source, tmp_path):
    """Run one transcoded MatMulNBits node in onnxruntime against gguf's own dequantization."""
    import gguf
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from edgeslm_onnx.quantize import BLOCK, _pack4, gguf_blocks

    name, qtype, codes, scales, zp, deq = next(
        t for t in gguf_blocks(str(gguf_q4_source.path), 4, 2) if t[1] == "Q4_1")
    n, k = deq.shape
    inits = [numpy_helper.from_array(_pack4(codes), "B"), numpy_helper.from_array(scales.reshape(-1), "S"),
             numpy_helper.from_array(zp.reshape(-1), "Z")]
    node = helper.make_node("MatMulNBits", ["A", "B", "S", "Z"], ["Y"], domain="com.microsoft", K=k, N=n, bits=4,
                            block_size=BLOCK, accuracy_level=0)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", onnx.TensorProto.FLOAT, [1, k])],
                          [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, [1, n])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)])
    eye = np.eye(k, dtype=np.float32)
    sess = ort.InferenceSession(model.SerializeToString())
    got = np.concatenate([sess.run(None, {"A": eye[i:i + 1]})[0] for i in range(k)]).T  # (n, k) weight columns
    np.testing.assert_allclose(got, deq, atol=1e-6)
    assert gguf.GGMLQuantizationType[qtype] == gguf.GGMLQuantizationType.Q4_1


def test_int4_gguf_needs_a_gguf_source(tiny_source, tmp_path):
    with pytest.raises(ExportError, match="not a GGUF"):
        export_model(tiny_source, tmp_path / "x", format="onnx", precision="int4-gguf", parity=False)


def test_unknown_precision(tiny_source, tmp_path):
    with pytest.raises(ExportError, match="writes fp32, int8, int4, int4-gguf"):
        export_model(tiny_source, tmp_path / "x", format="onnx", precision="int3")
