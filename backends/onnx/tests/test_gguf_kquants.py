"""int4-gguf for K-quant files (the common Q4_K_M mix) and every legacy block type: each GGUF
type becomes MatMulNBits blocks without re-quantizing (edgeslm_onnx.gguf_blocks), and the graph
computes the GGUF's own weights; a tied embedding shares the lm_head's codes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeslm.errors import ExportError
from edgeslm.testing import requires_export

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
WITH_OFFSET = {"Q4_1", "Q5_1", "Q4_K", "Q5_K"}
CTX = 64


def _gguf_weight(type_name: str, rows: int = 16, cols: int = 512, seed: int = 3):
    """Random well-formed blocks (every bit pattern of the codes) and gguf-py's dequantization."""
    from edgeslm.sources.gguf_quants import GGML_TYPES, TYPE_IDS, dequantize
    from edgeslm.testing_kquants import random_blocks

    _, per, _ = GGML_TYPES[TYPE_IDS[type_name]]
    raw = random_blocks(type_name, rows * cols // per, seed=seed)
    return raw, dequantize(raw, type_name, (rows, cols))


def _block_linear(raw, type_name, shape):
    from edgeslm_onnx.gguf_blocks import LAYOUTS, split_blocks
    from edgeslm_onnx.weights import BlockLinear

    bits, block, _ = LAYOUTS[type_name]
    codes, scales, offset = split_blocks(raw, type_name, shape)
    return BlockLinear(type_name, codes, scales, offset, None, bits, block)


@pytest.mark.parametrize("type_name", TYPES)
def test_blocks_hold_the_gguf_weights(type_name):
    """scale * (code - zero) (+ offset) is gguf's dequantization: bit for bit without an offset,
    within float32 rounding of the offset otherwise."""
    raw, deq = _gguf_weight(type_name)
    blk = _block_linear(raw, type_name, deq.shape)
    assert blk.codes.max() < 2 ** blk.bits
    got = blk.dequantize()
    if type_name in WITH_OFFSET:
        np.testing.assert_allclose(got, deq, rtol=0, atol=4 * np.finfo(np.float32).eps * np.abs(deq).max())
    else:
        np.testing.assert_array_equal(got, deq)


@requires_export
@pytest.mark.parametrize("type_name", TYPES)
def test_writer_linear_computes_the_gguf_weights(type_name):
    """The writer's own MatMulNBits (+ offset) nodes, run in onnxruntime with fp32 compute on the
    identity matrix, give the dequantized GGUF weight columns."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from edgeslm_onnx.graph_writer import MS, OPSET, DecoderWriter, Graph

    raw, deq = _gguf_weight(type_name)
    n, k = deq.shape
    w = DecoderWriter.__new__(DecoderWriter)  # only the linear-layer methods: no decoder description
    w.g, w.accuracy_level, w.offsets, w._blocksums, w._block_inits, w.counts = Graph(), 0, "matmul", {}, {}, {}
    y = w.make_linear("x", _block_linear(raw, type_name, (n, k)), "lin", k)
    w.g.nodes.append(helper.make_node("Identity", [y], ["y"]))
    graph = helper.make_graph(w.g.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [k, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [k, n])], initializer=w.g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)])
    model.ir_version = 10
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": np.eye(k, dtype=np.float32)})[0].T
    np.testing.assert_allclose(got, deq, rtol=0, atol=1e-6 * np.abs(deq).max())
    assert list(w.counts) == [f"MatMulNBits {4 if type_name in ('Q4_0', 'Q4_1', 'Q3_K', 'Q4_K') else 8}-bit ({type_name})"]
    ops = [nd.op_type for nd in w.g.nodes]
    assert ops.count("MatMul") == (2 if type_name in WITH_OFFSET else 0)  # block sums, offset


# -- whole models: a Q4_K_M-style llama file and a qwen2 file mixing every type ---------------------

def q4_k_m_plan(layers: int) -> dict[str, str]:
    """llama.cpp's Q4_K_M choice: Q4_K, with attn_v / ffn_down in Q6_K on some layers (here the
    first) and the output (a tied model's token embedding) in Q6_K."""
    plan = {"token_embd.weight": "Q6_K", "output.weight": "Q6_K"}
    for i in range(layers):
        for t in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"):
            plan[f"blk.{i}.{t}.weight"] = "Q4_K"
        for t in ("attn_v", "ffn_down"):
            plan[f"blk.{i}.{t}.weight"] = "Q6_K" if i == 0 else "Q4_K"
    return plan


@pytest.fixture(scope="module")
def kquant_gguf(tmp_path_factory):
    """name -> TinyGGUF: "llama" as Q4_K_M (tied, Q6_K embedding), "qwen2" with every K-quant and
    legacy type in turn (untied: a Q4_K embedding with its offset, a Q4_1 output...), "q3_k_m" a
    llama in a Q3_K_M-like mix (Q3_K: 4-bit codes, blocks of 16, no minimum) with Q4_K/Q5_K/Q6_K:
    gguf-py has no Q3_K encoder, so random well-formed blocks stand in for its weights."""
    from edgeslm import testing_kquants
    from edgeslm.testing_gguf import make_family_gguf

    cache = {}

    def make(name: str):
        if name not in cache:
            path = tmp_path_factory.mktemp("kq") / f"tiny-{name}.gguf"
            if name == "q3_k_m":
                with pytest.MonkeyPatch.context() as mp:
                    mp.setitem(testing_kquants.ENCODERS, "Q3_K", lambda w: testing_kquants.random_blocks(
                        "Q3_K", w.size // 256, seed=w.shape[0]).reshape(w.shape[0], -1))
                    cache[name] = make_family_gguf(path, "llama", types=("Q3_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"))
                assert set(cache[name].types.values()) - {"F32"} == {"Q3_K", "Q4_K", "Q5_K", "Q6_K"}
            else:
                types = q4_k_m_plan(2) if name == "llama" else ("Q4_K", "Q5_K", "Q6_K", "Q4_0", "Q4_1", "Q5_0",
                                                                 "Q5_1", "Q8_0", "F16")
                cache[name] = make_family_gguf(path, name, types=types)
        return cache[name]

    return make


def _reference(source, ids):
    import torch

    from edgeslm.arch.concat import ConcatCache

    model = source.export_module(CTX)
    with torch.no_grad():
        return model.run(torch.tensor([ids]), ConcatCache(model.empty_cache(0)), last_only=False)[0].numpy()


@requires_export
@pytest.mark.parametrize("file,offsets", [("llama", "matmul"), ("qwen2", "matmul"), ("qwen2", "rows"),
                                          ("qwen2", "reduce"), ("q3_k_m", "matmul")])
def test_kquant_gguf_logits_equal_torch(file, offsets, kquant_gguf, tmp_path):
    """With fp32 compute (accuracy_level 0) the writer's logits equal the torch reference on the
    dequantized GGUF, over a prefill and decode steps, with each exact offset form (qwen2's file
    has 4- and 8-bit types with offsets: Q4_K, Q4_1, Q5_K, Q5_1), and for Q3_K (q3_k_m)."""
    import onnx

    from edgeslm.sources import load_source
    from edgeslm_onnx.graph_writer import DecoderWriter
    from edgeslm_onnx.weights import GgufWeights

    from test_graph_writer import _Runner  # the engine's binding without a bundle (same folder)

    tg = kquant_gguf(file)
    source = load_source(tg.path)
    state = {k: v.detach().float().numpy() for k, v in source.module.state_dict().items()}
    weights = GgufWeights(state, str(source.path), source.spec.num_heads, source.spec.num_kv_heads)
    file_types = {t for t in tg.types.values() if t not in ("F32", "F16")}
    assert set(weights.kinds) == file_types and weights.max_abs_error < 1e-6, (weights.kinds, file_types)
    writer = DecoderWriter(source.spec.description, weights, CTX, 0, offsets)
    onnx.save_model(writer.model(), str(tmp_path / "m.onnx"))
    assert not any(k.startswith("MatMul fp32") for k in writer.counts) or file == "qwen2"  # qwen2: an F16 matrix
    ids = [int(t) for t in np.random.RandomState(2).randint(3, source.spec.vocab_size, size=16)]
    ref = _reference(source, ids)
    run = _Runner(tmp_path / "m.onnx", source.spec.vocab_size)
    got = [run.step(ids[:10])] + [run.step([t]) for t in ids[10:]]
    np.testing.assert_allclose(np.stack(got), ref[9:], atol=1e-4 * max(1.0, float(np.abs(ref).max())))


@requires_export
def test_q4_k_m_graph_packs_by_layout_and_shares_the_embedding(kquant_gguf, tmp_path):
    """Q4_K_M: q/k (Q4_K) pack and v (Q6_K) runs beside them on layer 0; the Q6_K embedding is
    ONE initializer read by GatherBlockQuantized and the lm_head's MatMulNBits."""
    import collections

    import onnx

    from edgeslm.exporting import export_model
    from edgeslm.sources import load_source

    b = export_model(load_source(kquant_gguf("llama").path), tmp_path / "b", format="onnx", precision="int4-gguf",
                     context_length=CTX, parity_tokens=4, options={"graph": "writer", "accuracy_level": 0})
    q = b.manifest["quantization"]
    assert q["details"]["gguf_tensors_mapped"] == {"Q4_K": 12, "Q6_K": 3}
    assert q["embedding"] == q["lm_head"] == "gguf-Q6_K" and q["matmuls_kept_float"] == 0
    assert q["block_sizes"] == {"Q4_K": 32, "Q6_K": 16} and q["max_abs_weight_error"] < 1e-6
    assert b.manifest["parity"]["top1_agreement"] == 1.0
    m = onnx.load(str(b.path / "model.onnx"), load_external_data=False)
    ops = collections.Counter(n.op_type for n in m.graph.node)
    # layer 0: q+k | v, gate+up, o, down; layer 1: qkv, gate_up, o, down; + lm_head
    assert ops["MatMulNBits"] == 5 + 4 + 1 and ops["Concat"] == 1 and ops["GatherBlockQuantized"] == 1
    gbq = next(n for n in m.graph.node if n.op_type == "GatherBlockQuantized")
    head = next(n for n in m.graph.node if n.name == "lm_head")
    assert gbq.input[0] == head.input[1]  # one codes initializer
    embed_bytes = 320 * 256  # vocab x hidden 8-bit codes, once
    data = (b.path / "model.onnx.data").stat().st_size
    assert data < embed_bytes * 2 + 2 * 256 * 512 * 3 + 400_000  # no second copy of the codes


@requires_export
def test_q2_k_is_refused_by_name(tmp_path, monkeypatch):
    """A type the writer cannot transcode stops the export with its name (not a silent fp32)."""
    from edgeslm import testing_kquants
    from edgeslm.exporting import export_model
    from edgeslm.sources import load_source
    from edgeslm.testing_gguf import make_family_gguf

    # no Q2_K encoder (gguf-py has none either): random well-formed blocks stand in for the weights
    monkeypatch.setitem(testing_kquants.ENCODERS, "Q2_K", lambda w: testing_kquants.random_blocks(
        "Q2_K", w.size // 256).reshape(w.shape[0], -1))

    tg = make_family_gguf(tmp_path / "q2k.gguf", "llama", types={"blk.0.attn_q.weight": "Q2_K",
                                                                     "blk.1.ffn_up.weight": "Q4_K"})
    with pytest.raises(ExportError, match="cannot transcode Q2_K blocks .*blk.0.attn_q.weight.*-p int4"):
        export_model(load_source(tg.path), tmp_path / "x", format="onnx", precision="int4-gguf", parity=False,
                     options={"graph": "writer"})


@requires_export
def test_cli_exports_a_q4_k_m_file_and_runs_it(kquant_gguf, tmp_path, capsys):
    """``edgeslm export tiny-Q4_K_M.gguf -f onnx -p int4-gguf`` then ``edgeslm run``. fp32 compute:
    with int8 activations (the default accuracy_level 4) the random tiny weights' near-tied logits
    flip (90-95% top-1 for every type, Q4_1 and Q8_0 included); SmolLM2 measures the default."""
    from edgeslm.cli import main

    tg = kquant_gguf("llama")
    out = tmp_path / "bundle"
    assert main(["export", str(tg.path), "-f", "onnx", "-p", "int4-gguf", "--context-length", str(CTX),
                 "--option", "accuracy_level=0", "-o", str(out)]) == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["artifacts"]["graph"]["kind"] == "writer" and manifest["parity"]["passed"], manifest["parity"]
    capsys.readouterr()
    code = main(["run", str(out), "--raw", "--prompt", "The capital of France is", "-n", "6", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert code == 0 and len(res["token_ids"]) >= 1
