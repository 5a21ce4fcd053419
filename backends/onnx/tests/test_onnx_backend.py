"""ONNX exporter + engine on the tiny model: what is particular to ONNX (manifest, graph IO,
engine options, the IO-binding path). Greedy parity with the source, KV-cache pieces, reset and
errors are the conformance suite's (tests/conformance), which runs this engine too."""

import json

import numpy as np

import edgeslm
from edgeslm.testing import requires_export
from edgeslm.bundle import Bundle

pytestmark = requires_export


def test_manifest_records_parity_and_files(onnx_bundle):
    m = json.loads((onnx_bundle / "manifest.json").read_text())
    assert m["format"] == "onnx" and m["precision"] == "fp32" and m["schema_version"] == 1
    assert {"model.onnx", "tokenizer.json", "edgeslm_tokenizer.json"} <= set(m["files"])
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in m["files"].values())
    p = m["parity"]
    assert p["passed"] and p["top1_agreement"] == 1.0 and p["tokens"] == 3 * 8
    assert p["max_abs_logit_diff"] < 1e-3 and p["kl_mean"] < 1e-6
    assert abs(p["perplexity_export"] - p["perplexity_source"]) / p["perplexity_source"] < 1e-3
    assert m["context_length"] == 128 and m["artifacts"]["model"] == "model.onnx"


def test_graph_has_dynamic_seq_and_past(onnx_bundle):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_bundle / "model.onnx"))
    inputs = {i.name: i.shape for i in sess.get_inputs()}
    assert inputs["input_ids"][0] == 1 and isinstance(inputs["input_ids"][1], str)
    assert len([n for n in inputs if n.startswith("past_")]) == 2 * 2
    # the graph writer's KV cache is one preallocated buffer of the context length, written in place
    assert "seqlens_k" in inputs and inputs["past_key_0"][2] == 128


def test_threads_option(onnx_bundle):
    with edgeslm.load(onnx_bundle, engine_options={"threads": 1}) as model:
        assert model.engine.session.get_session_options().intra_op_num_threads == 1
        assert model.generate("hi", max_new_tokens=3, stop_on_eos=False).metrics.output_tokens == 3


def test_bundle_open_is_cheap_without_verify(onnx_bundle):
    b = Bundle.open(onnx_bundle, verify=False)
    assert b.spec.num_layers == 2 and b.bytes > 0


def test_io_binding_and_numpy_paths_agree(onnx_bundle):
    ids = list(range(5, 25))
    outs = []
    for io_binding in (True, False):
        with edgeslm.load(onnx_bundle, engine_options={"io_binding": io_binding}) as model:
            eng = model.engine
            rows = [eng.prefill(ids[:12])] + [eng.decode(t) for t in ids[12:]]
            outs.append(np.stack(rows))
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)
