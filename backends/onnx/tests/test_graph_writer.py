"""The graph writer against the torch reference decoder, on a tiny model of every family.

Each family is exported with ``graph=writer`` and run through the engine (shared KV buffer
bound as past and present): logits after a prefill, a second prefill continuing the cache, a
run of decode steps, and after a prefix reuse (truncate + continue) must equal the torch
reference's; the KV buffer must hold, in place, exactly the keys/values the reference computes.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeslm.errors import ExportError
from edgeslm.exporting import export_model
from edgeslm.testing import requires_export

pytestmark = requires_export

# GroupQueryAttention's rotary needs head_dim and rotary_dim multiples of 16: the tiny configs
# of these families get such sizes here (the other features under test stay as they are).
WRITER_TRAITS = {"qwen3": {"head_dim": 32}, "gemma2": {"head_dim": 32},
                 "phi3": {"hidden_size": 128, "head_dim": 32, "partial_rotary_factor": 0.5}}
FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3"]
CTX = 64


def tiny_source(tmp_path_factory, family: str, traits: dict | None = None):
    from edgeslm import testing
    from edgeslm.sources import load_source

    saved = dict(testing.FAMILY_TRAITS[family])
    testing.FAMILY_TRAITS[family] = {**saved, **(traits or {})}
    try:
        folder = testing.make_tiny_hf_folder(tmp_path_factory.mktemp(family), architecture=family)
    finally:
        testing.FAMILY_TRAITS[family] = saved
    return load_source(str(folder))


def reference(source, ids: list[int]):
    """Torch logits (S, V) at every position and the concat cache's K/V (1, kv, S, hd) per layer."""
    import torch

    from edgeslm.arch.concat import ConcatCache

    model = source.export_module(CTX)
    cache = ConcatCache(model.empty_cache(0))
    with torch.no_grad():
        logits = model.run(torch.tensor([ids]), cache, last_only=False)[0].numpy()
    return logits, [t.numpy() for t in cache.outputs()]


@pytest.fixture(scope="module", params=FAMILIES)
def family_bundle(request, tmp_path_factory):
    family = request.param
    source = tiny_source(tmp_path_factory, family, WRITER_TRAITS.get(family))
    bundle = export_model(source, tmp_path_factory.mktemp(f"{family}_onnx"), format="onnx", context_length=CTX,
                          parity_tokens=8, options={"graph": "writer"})
    return family, source, bundle


def test_writer_logits_and_cache_equal_torch(family_bundle):
    from edgeslm_onnx.engine import OnnxEngine

    family, source, bundle = family_bundle
    assert bundle.manifest["artifacts"]["graph"]["kind"] == "writer"
    assert bundle.manifest["parity"]["passed"]
    ids = [int(t) for t in np.random.RandomState(1).randint(3, source.spec.vocab_size, size=40)]
    ref, kv = reference(source, ids)
    tol = 2e-4 * max(1.0, float(np.abs(ref).max()))
    eng = OnnxEngine(bundle, threads=1)
    assert eng.shared_buffer
    got = [eng.prefill(ids[:20]), eng.prefill(ids[20:27])]  # a prefill that continues the cache
    got += [eng.decode(t) for t in ids[27:]]
    want = [ref[19], ref[26], *ref[27:]]
    for step, (g, w) in enumerate(zip(got, want)):
        np.testing.assert_allclose(g, w, atol=tol, err_msg=f"{family}: step {step}")
    # GroupQueryAttention wrote K/V in place into the bound buffers, nothing past position 40
    for i, buf in enumerate(eng._kv):
        arr = buf.numpy()  # (1, kv, CTX, hd)
        np.testing.assert_allclose(arr[:, :, :40], kv[i], atol=1e-4, err_msg=f"{family}: {eng.past_names[i]}")
        assert not arr[:, :, 40:].any()
    # prefix reuse: keep 25 positions, continue with 8 tokens -> same logits as the full run
    assert eng.truncate(25) and eng.position == 25
    np.testing.assert_allclose(eng.prefill(ids[25:33]), ref[32], atol=tol)
    assert eng.truncate(0) and eng.position == 0
    np.testing.assert_allclose(eng.prefill(ids[:5]), ref[4], atol=tol)
    eng.close()


def test_writer_graph_is_contrib_ops(family_bundle):
    import collections

    import onnx

    family, source, bundle = family_bundle
    m = onnx.load(str(bundle.path / "model.onnx"), load_external_data=False)
    ops = collections.Counter(n.op_type for n in m.graph.node)
    layers = source.spec.num_layers
    assert ops["GroupQueryAttention"] == layers and ops["Concat"] == 0
    assert ops["SkipSimplifiedLayerNormalization"] == 2 * layers  # residual adds fused into the norms
    assert ops["MatMul"] == 4 * layers + 1  # packed qkv, o, packed gate/up, down; lm_head


def test_writer_refuses_what_gqa_cannot_do(tmp_path_factory):
    source = tiny_source(tmp_path_factory, "qwen3")  # head_dim 24
    with pytest.raises(ExportError, match="multiples of 16"):
        export_model(source, tmp_path_factory.mktemp("q3"), format="onnx", context_length=CTX, parity=False,
                     options={"graph": "writer"})


def test_unknown_graph_option(tmp_path_factory):
    source = tiny_source(tmp_path_factory, "llama")
    with pytest.raises(ExportError, match="graph='x'"):
        export_model(source, tmp_path_factory.mktemp("x"), format="onnx", parity=False, options={"graph": "x"})


@pytest.mark.parametrize("offsets", ["reduce", "matmul", "rows"])
def test_q4_1_offset_forms_are_exact(tiny_gguf_q4, tmp_path, offsets):
    """Every exact form of the Q4_1 offset computes the GGUF's own weights: with fp32 compute
    (accuracy_level 0) the writer's logits equal the torch reference on the dequantized GGUF."""
    import onnx

    from edgeslm.sources import load_source
    from edgeslm_onnx.graph_writer import DecoderWriter
    from edgeslm_onnx.weights import GgufWeights

    source = load_source(tiny_gguf_q4)
    state = {k: v.detach().float().numpy() for k, v in source.module.state_dict().items()}
    weights = GgufWeights(state, str(source.path), source.spec.num_heads, source.spec.num_kv_heads)
    assert weights.kinds == {"Q4_1": 14, "Q8_0": 1} and weights.max_abs_error < 1e-5
    onnx.save_model(DecoderWriter(source.spec.description, weights, CTX, 0, offsets).model(), str(tmp_path / "m.onnx"))
    ids = list(range(5, 21))
    ref, _ = reference(source, ids)
    run = _Runner(tmp_path / "m.onnx", source.spec.vocab_size)
    got = [run.step(ids[:12])] + [run.step([t]) for t in ids[12:]]
    np.testing.assert_allclose(np.stack(got), ref[11:], atol=1e-3 * max(1.0, float(np.abs(ref).max())))


def test_q4_1_int8_offsets_are_close_not_exact(tiny_gguf_q4, tmp_path):
    """offsets=int8 (the offsets as an 8-bit MatMulNBits weight over zero-padded block sums) is
    not exact, but with fp32 compute its logits stay within 8-bit rounding of the reference."""
    import onnx

    from edgeslm.sources import load_source
    from edgeslm_onnx.graph_writer import DecoderWriter
    from edgeslm_onnx.weights import GgufWeights

    source = load_source(tiny_gguf_q4)
    state = {k: v.detach().float().numpy() for k, v in source.module.state_dict().items()}
    weights = GgufWeights(state, str(source.path), source.spec.num_heads, source.spec.num_kv_heads)
    writer = DecoderWriter(source.spec.description, weights, CTX, 0, "int8")
    onnx.save_model(writer.model(), str(tmp_path / "m.onnx"))
    assert writer.counts["Q4_1 offsets as MatMulNBits 8-bit"] == 4 * source.spec.num_layers  # qkv, o, gate/up, down
    ids = list(range(5, 21))
    ref, _ = reference(source, ids)
    run = _Runner(tmp_path / "m.onnx", source.spec.vocab_size)
    got = np.stack([run.step(ids[:12])] + [run.step([t]) for t in ids[12:]])
    err = float(np.abs(got - ref[11:]).max()) / max(1.0, float(np.abs(ref).max()))
    print("int8 offsets: max relative logit error", err)
    assert 0 < err < 2e-2, err
    assert (got.argmax(-1) == ref[11:].argmax(-1)).mean() >= 0.8


class _Runner:
    """The engine's binding, without a bundle: shared KV buffers, lengths updated in place."""

    def __init__(self, path, vocab, register: bool = False):
        import onnxruntime as ort

        so = ort.SessionOptions()
        if register:  # q4_1_offsets=fused: edgeslm's custom ops
            from edgeslm_onnx.kernels import register as register_ops

            register_ops(so)
        self.sess = ort.InferenceSession(str(path), so)
        self.io = self.sess.io_binding()
        self.io.bind_output("logits")  # first: get_outputs() follows the binding order
        for i in self.sess.get_inputs():
            if i.name.startswith("past_"):
                v = ort.OrtValue.ortvalue_from_numpy(np.zeros(i.shape, np.float32))
                self.io.bind_ortvalue_input(i.name, v)
                self.io.bind_ortvalue_output("present_" + i.name[5:], v)
        self.pos = 0

    def step(self, ids):
        self.pos += len(ids)
        self.io.bind_cpu_input("input_ids", np.asarray([ids], np.int64))
        self.io.bind_cpu_input("seqlens_k", np.array([self.pos - 1], np.int32))
        self.io.bind_cpu_input("total_sequence_length", np.array(self.pos, np.int32))
        self.sess.run_with_iobinding(self.io)
        return self.io.get_outputs()[0].numpy()[0].copy()


def test_auto_falls_back_to_torch_with_the_reason(tmp_path_factory):
    source = tiny_source(tmp_path_factory, "qwen3")  # head_dim 24: not for GroupQueryAttention's rotary
    b = export_model(source, tmp_path_factory.mktemp("q3auto"), format="onnx", context_length=CTX, parity_tokens=4)
    g = b.manifest["artifacts"]["graph"]
    assert g["kind"] == "torch" and "multiples of 16" in g["writer_unsupported"]
    assert b.manifest["parity"]["passed"]
