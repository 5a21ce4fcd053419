"""Core ML exporter on the tiny model: package spec, compression, traced-graph parity, Linux error.

Core ML cannot predict on Linux, so these tests check what can be proven here (see the exporter
docstring); ``test_prediction_on_macos`` runs the real engine and is skipped elsewhere.
"""

import json
import sys

import numpy as np
import pytest

from edgeslm.testing import requires_export

pytestmark = [requires_export, pytest.mark.filterwarnings("ignore::RuntimeWarning")]
pytest.importorskip("coremltools", reason="needs the Core ML export extra: pip install 'edgeslm-coreml[export]'")

CTX = 128


@pytest.fixture(scope="session")
def coreml_bundle(bundle_factory):
    """coreml_bundle(precision) -> a tiny Core ML bundle (context 128, 8 parity tokens)."""
    return lambda precision: bundle_factory("coreml", precision)


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


@pytest.mark.parametrize("precision", ["fp16", "int8", "int4"])
def test_package_spec(coreml_bundle, tiny_source, precision):
    m = _manifest(coreml_bundle(precision))
    s, cm = tiny_source.spec, m["coreml"]
    assert m["format"] == "coreml" and m["precision"] == precision and m["context_length"] == CTX
    assert cm["checks"] == "passed" and cm["model_type"] == "mlProgram" and cm["specification_version"] >= 9
    ins = {f["name"]: f for f in cm["inputs"]}
    assert ins["input_ids"]["dtype"] == "int32" and ins["input_ids"]["range"] == [[1, 1], [1, CTX]]
    assert ins["causal_mask"]["dtype"] == "fp16" and ins["causal_mask"]["range"][2:] == [[1, CTX], [1, CTX]]
    assert [o["name"] for o in cm["outputs"]] == ["logits"]
    cache = [s.num_layers, 1, s.num_kv_heads, CTX, s.head_dim]
    assert {st["name"]: (st["shape"], st["dtype"]) for st in cm["states"]} == {
        "key_cache": (cache, "fp16"), "value_cache": (cache, "fp16")}
    ops = cm["op_counts"]
    assert ops["read_state"] == 2 and ops["coreml_update_state"] == ops["slice_update"] == 2 * s.num_layers
    assert ops["linear"] == 7 * s.num_layers + 1 and ops["softmax"] == s.num_layers
    assert cm["linear_compute_dtype"] == ["fp16"]
    assert m["artifacts"]["model"] == "model.mlpackage"
    assert any(f.startswith("model.mlpackage/Data/com.apple.CoreML/weights/") for f in m["files"])
    assert cm["bytes"]["package"] == sum(f["bytes"] for n, f in m["files"].items() if n.startswith("model.mlpackage/"))


def test_compression_is_in_the_package(coreml_bundle):
    # tiny k/v projections have 2048 elements: at coremltools' threshold, so they stay fp16
    comp = {p: _manifest(coreml_bundle(p))["coreml"]["compressed_weights"] for p in ("fp16", "int8", "int4")}
    assert comp["fp16"]["count"] == 0
    assert comp["int8"]["ops"] == {"constexpr_blockwise_shift_scale": 11} and comp["int8"]["storage"] == {"int8": 11}
    assert comp["int4"]["ops"] == {"constexpr_blockwise_shift_scale": 11} and comp["int4"]["storage"] == {"int4": 11}
    assert comp["int4"]["blocks"] == [[1, 32]]
    assert _manifest(coreml_bundle("int4"))["compression"]["block_size"] == 32
    sizes = {p: _manifest(coreml_bundle(p))["coreml"]["bytes"]["weights"] for p in comp}
    assert sizes["int4"] < sizes["int8"] < sizes["fp16"]


@pytest.mark.parametrize("precision", ["fp16", "int4"])
def test_traced_graph_parity(coreml_bundle, precision):
    m = _manifest(coreml_bundle(precision))
    p = m["parity"]
    assert p["passed"] and p["top1_agreement"] == 1.0 and p["tokens"] == 3 * 8
    assert p["max_abs_logit_diff"] < 1e-3 and p["min_top1_agreement"] == 1.0
    assert abs(p["perplexity_export"] - p["perplexity_source"]) / p["perplexity_source"] < 1e-3
    v = m["verification"]
    assert "traced" in v["parity"] and "macOS" in v["prediction"]
    emu = v["emulation"]
    assert emu["weights_read_back"] == 15 and emu["tokens"] == 3 * 16
    if precision == "fp16":
        assert emu["top1_agreement"] >= 0.9  # fp16 arithmetic only; the random tiny model has near-ties


def test_traced_module_runs_like_the_source_in_pieces(tiny_source):
    """Prefill in two pieces, then decode: the trace did not freeze any sequence length."""
    import torch

    from edgeslm_coreml.model import from_source, trace
    from edgeslm_coreml.torch_engine import TorchCoreMLEngine

    eng = TorchCoreMLEngine(trace(from_source(tiny_source, CTX)), tiny_source.spec, CTX)
    ids = tiny_source.tokenizer.encode("The capital of France is Paris. The capital of Italy")
    with torch.no_grad():
        ref = tiny_source.module(torch.tensor([ids])).logits[0].numpy()
    eng.prefill(ids[:5])
    got = eng.prefill(ids[5:-1])
    np.testing.assert_allclose(got, ref[-2], atol=1e-4)
    np.testing.assert_allclose(eng.decode(ids[-1]), ref[-1], atol=1e-4)
    assert eng.position == len(ids)
    eng.reset()
    np.testing.assert_allclose(eng.prefill(ids), ref[-1], atol=1e-4)


def test_tiny_palettized_and_bad_precision(tiny_source, tmp_path):
    from edgeslm.errors import ExportError
    from edgeslm.exporting import export_model

    with pytest.raises(ExportError, match="writes fp16, int8, int4, palettized"):
        export_model(tiny_source, tmp_path / "x", format="coreml", precision="fp32")
    b = export_model(tiny_source, tmp_path / "pal", format="coreml", precision="palettized", context_length=32,
                     parity=False, options={"emulate": False})
    comp = b.manifest["coreml"]["compressed_weights"]
    assert comp["ops"] == {"constexpr_lut_to_dense": 11} and comp["storage"] == {"uint4": 11}
    assert b.manifest["compression"]["nbits"] == 4 and "parity" not in b.manifest


@pytest.mark.skipif(sys.platform == "darwin", reason="checks the error shown off Apple platforms")
def test_run_on_linux_says_where_core_ml_runs(coreml_bundle, capsys):
    import edgeslm
    from edgeslm.cli import main
    from edgeslm_coreml.engine import CoreMLUnavailableError

    bundle = coreml_bundle("int4")
    assert main(["run", str(bundle), "--prompt", "hi", "-n", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert "Core ML runs on Apple platforms (macOS 15+/iOS 18+)" in err and "verified on Linux" in err
    assert "greedy top-1 100%" in err
    with pytest.raises(CoreMLUnavailableError):
        edgeslm.load(bundle)


@pytest.mark.skipif(sys.platform != "darwin", reason="Core ML prediction exists on macOS 15+ only")
def test_prediction_on_macos(coreml_bundle, tiny_source):
    """Real MLModel.predict with state: the fp16 package follows the source's greedy tokens."""
    import edgeslm

    prompt = "The capital of France is"
    with edgeslm.load(coreml_bundle("fp16")) as model:
        res = model.generate(prompt, max_new_tokens=8, stop_on_eos=False)
        eng = model.engine
        eng.reset()
        logits = eng.prefill(tiny_source.tokenizer.encode(prompt))
        assert logits.shape == (tiny_source.spec.vocab_size,) and logits.dtype == np.float32
    assert res.metrics.output_tokens == 8
    assert res.token_ids[0] == int(logits.argmax())


def _families():
    from edgeslm.arch.families import supported_names

    return supported_names()


@pytest.mark.parametrize("family", _families())
def test_every_family_converts_with_traced_parity_and_spec_checks(bundle_factory, family_source, family):
    """Every family through ct.convert: the traced graph (fp32, source weights) agrees 100% with the
    transformers source, and the package passes the spec checks (states, IO, fp16 compute)."""
    m = _manifest(bundle_factory("coreml", "fp16", family=family))
    p, cm = m["parity"], m["coreml"]
    assert p["passed"] and p["top1_agreement"] == 1.0, p
    assert cm["checks"] == "passed" and cm["model_type"] == "mlProgram"
    s = family_source(family).spec
    assert {st["name"]: st["shape"] for st in cm["states"]}["key_cache"] == [s.num_layers, 1, s.num_kv_heads, CTX,
                                                                             s.head_dim]
    assert cm["op_counts"]["softmax"] == s.num_layers
