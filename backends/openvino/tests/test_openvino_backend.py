"""OpenVINO exporter + engine: stateful IR, NNCF int8/int4 records, engine options, CLI.

The tiny model runs in seconds; the SmolLM2 int8 export is marked slow (about 2-3 minutes).
The shared black-box checks (greedy = source, streaming, reset, context, bad input) live in
tests/conformance and run against this engine too.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

pytest.importorskip("openvino")
pytestmark = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("torch", "transformers", "nncf")),
    reason="needs the export extra: pip install 'edgeslm-openvino[export]'")


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


@pytest.fixture(scope="module")
def fp32_bundle(bundle_factory):
    return bundle_factory("openvino")


def test_fp32_manifest_and_parity(fp32_bundle):
    m = _manifest(fp32_bundle)
    assert m["format"] == "openvino" and m["precision"] == "fp32" and m["context_length"] == 128
    art = m["artifacts"]
    assert art["model"] == "openvino_model.xml" and art["stateful"] is True
    assert {"openvino_model.xml", "openvino_model.bin"} <= set(m["files"])
    assert "compression" not in m
    p = m["parity"]
    assert p["passed"] and p["top1_agreement"] == 1.0 and p["max_abs_logit_diff"] < 1e-3


def test_ir_is_stateful(fp32_bundle, tiny_source):
    import openvino as ov

    model = ov.Core().read_model(str(fp32_bundle / "openvino_model.xml"))
    # beam_idx reorders the cache (the CPU plugin's stateful-SDPA fusion needs that Gather); the
    # other two are only OpenVINO GenAI's (genai.py, unused)
    assert [p.get_any_name() for p in model.inputs] == ["input_ids", "beam_idx", "attention_mask", "position_ids"]
    assert [p.get_any_name() for p in model.outputs] == ["logits"]
    assert str(model.output("logits").get_partial_shape()) == f"[1,1,{tiny_source.spec.vocab_size}]"
    assert len(model.get_variables()) == 2 * tiny_source.spec.num_layers
    assert str(model.input("input_ids").get_partial_shape()) == "[1,?]"


def _layer_type(node) -> str:
    return node.get_rt_info()["layerType"].astype(str)


@pytest.mark.parametrize("options", [{}, {"inference_precision": "default"}])
def test_cpu_plugin_fuses_attention_with_the_cache(fp32_bundle, tiny_source, options):
    """In the compiled (runtime) graph each layer's attention is one ScaledDotProductAttention node
    that reads its two cache states directly (the plugin's StatefulSDPAFusion fired): no
    Concatenation copies the cache each step and no MatMul + Softmax decomposition is left."""
    import edgeslm

    with edgeslm.load(fp32_bundle, engine_options=options) as m:
        ops = m.engine.compiled.get_runtime_model().get_ordered_ops()
    sdpa = [op for op in ops if _layer_type(op) == "ScaledDotProductAttention"]
    assert len(sdpa) == tiny_source.spec.num_layers
    for op in sdpa:
        assert [_layer_type(i.get_source_output().get_node()) for i in op.inputs()].count("MemoryInput") == 2
    states = [op for op in ops if _layer_type(op) == "MemoryInput"]
    assert len(states) == 2 * tiny_source.spec.num_layers
    for op in states:
        assert {_layer_type(t.get_node()) for t in op.output(0).get_target_inputs()} <= {"ScaledDotProductAttention",
                                                                                          "ShapeOf"}
    assert "Softmax" not in {_layer_type(op) for op in ops}


def test_engine_options_reach_the_runtime(fp32_bundle):
    import edgeslm

    with edgeslm.load(fp32_bundle, engine_options={"threads": 1}) as m:
        eng = m.engine
        assert eng.stateful and eng.device == "CPU"
        assert int(eng.compiled.get_property("INFERENCE_NUM_THREADS")) == 1
        assert str(eng.compiled.get_property("INFERENCE_PRECISION_HINT")) in ("<Type: 'float32'>", "f32")
        assert len(eng.request.query_state()) == 2 * eng.spec.num_layers
        fp32 = m.generate("The capital of France is", max_new_tokens=8, stop_on_eos=False).token_ids
    with edgeslm.load(fp32_bundle, engine_options={"threads": 2, "cpu_pinning": False}) as m:
        assert m.engine.compiled.get_property("ENABLE_CPU_PINNING") is False
        assert m.generate("The capital of France is", max_new_tokens=8, stop_on_eos=False).token_ids == fp32
    # bf16 (this CPU's default) runs too; it is not held to fp32 parity
    with edgeslm.load(fp32_bundle, engine_options={"inference_precision": "bf16"}) as m:
        assert len(m.generate("The capital of France is", max_new_tokens=8, stop_on_eos=False).token_ids) == 8
    assert len(fp32) == 8


def test_unknown_device_is_a_clear_error(fp32_bundle):
    from edgeslm.bundle import Bundle
    from edgeslm.errors import BundleError
    from edgeslm_openvino.engine import OpenVINOEngine

    with pytest.raises(BundleError, match="cannot compile .* for NOPE"):
        OpenVINOEngine(Bundle.open(fp32_bundle), device="NOPE")


def test_int8_weights_and_parity(bundle_factory, fp32_bundle):
    b = bundle_factory("openvino", "int8")
    m = _manifest(b)
    c = m["compression"]
    assert c["library"] == "nncf" and c["mode"] == "int8_asym"
    # 14 decoder matrices in int8; the tied embedding/lm_head table stays fp16 (int8_embedding)
    assert c["layers_by_bits"] == {"8": 14} and c["fp16_layers"] == ["model.embed_tokens.weight"]
    import openvino as ov

    consts = {op.get_friendly_name(): op.get_element_type().get_type_name()
              for op in ov.Core().read_model(str(b / "openvino_model.xml")).get_ordered_ops()
              if op.get_type_name() == "Constant"}
    assert consts["self.model.embed_tokens.weight"] == "f16"
    assert m["parity"]["passed"] and m["parity"]["top1_agreement"] >= 0.95
    assert m["parity"]["min_top1_agreement"] == 0.95
    bin8 = m["files"]["openvino_model.bin"]["bytes"]
    assert bin8 < 0.4 * _manifest(fp32_bundle)["files"]["openvino_model.bin"]["bytes"]


def test_stateless_variant_matches_stateful(fp32_bundle, tiny_source, tmp_path):
    """The KV-through-Python IR (stateful=False) computes the same logits as the stateful one."""
    import edgeslm
    from edgeslm.exporting import export_model

    b = export_model(tiny_source, tmp_path / "io", format="openvino", context_length=128, parity=False,
                     options={"stateful": False})
    assert b.manifest["artifacts"]["stateful"] is False
    ids = tiny_source.tokenizer.encode("def fibonacci(n):\n")
    with edgeslm.load(b.path) as a, edgeslm.load(fp32_bundle) as s:
        assert not a.engine.stateful and len(a.engine.past_names) == 4
        np.testing.assert_allclose(a.engine.prefill(ids), s.engine.prefill(ids), atol=1e-5)
        for t in (5, 9, 40):
            np.testing.assert_allclose(a.engine.decode(t), s.engine.decode(t), atol=1e-5)
        assert a.engine.position == s.engine.position == len(ids) + 3


def test_int4_group_size_fallback(tiny_source):
    """hidden 64 is not a multiple of 48: 'error' names the fix, 'adjust' picks a group that fits."""
    from edgeslm.errors import ExportError
    from edgeslm_openvino.compress import CompressionConfig, compress
    from edgeslm_openvino.exporter import to_openvino

    with pytest.raises(ExportError, match="group_size"):
        compress(to_openvino(tiny_source), "int4", CompressionConfig(group_size=48, group_size_fallback="error"))
    _, rec = compress(to_openvino(tiny_source), "int4", CompressionConfig(group_size=48))
    assert rec["group_size"] == 48 and rec["group_size_fallback"] == "adjust"
    assert rec["layers_by_bits"]["4"] == 14
    with pytest.raises(ExportError, match="ratio"):
        CompressionConfig.from_options({"ratio": 2})


def test_cli_export_int4_and_run_chat(tiny_hf, tmp_path, capsys):
    """`edgeslm export ... --format openvino --precision int4` then `edgeslm run --chat` streams."""
    from edgeslm.cli import main

    out = tmp_path / "ov-int4"
    assert main(["export", str(tiny_hf), "--format", "openvino", "--precision", "int4", "-o", str(out),
                 "--context-length", "128", "--parity-tokens", "8"]) == 0
    m = _manifest(out)
    c = m["compression"]
    assert c["mode"] == "int4_asym" and c["group_size"] == 64 and c["ratio"] == 1.0
    assert c["layers_by_bits"] == {"4": 14, "8": 1} and c["int8_layers"] == ["model.embed_tokens.weight"]
    assert c["tied_embeddings"] is True
    assert m["parity"]["min_top1_agreement"] is None and m["parity"]["passed"]  # int4: recorded only
    capsys.readouterr()
    assert main(["run", str(out), "--chat", "--prompt", "Hello", "-n", "6"]) == 0
    io = capsys.readouterr()
    assert "tok/s decode" in io.err and io.out.strip()


@pytest.mark.slow
def test_smollm2_int8_parity_and_chat(smollm2_openvino_int8):
    """SmolLM2-135M to a stateful int8 IR: >= 95% greedy top-1 agreement and a sensible answer."""
    import edgeslm

    b = smollm2_openvino_int8
    p = b.manifest["parity"]
    assert p["passed"] and p["top1_agreement"] >= 0.95, p
    c = b.manifest["compression"]
    assert c["layers_by_bits"] == {"8": 210} and c["fp16_layers"] == ["model.embed_tokens.weight"]  # 30 x 7 int8
    with edgeslm.load(b.path) as model:
        res = model.chat([{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=24)
    assert "Paris" in res.text, res.text
