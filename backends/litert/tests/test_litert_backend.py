"""LiteRT exporter + engine on the tiny model: signatures, KV cache, int8, chunked prefill, CLI.

Each tiny conversion takes ~30-40 s (litert-torch lowers two signatures). The shared black-box
checks live in tests/conformance and run against this engine too (same cached fp32 bundle).
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")
pytestmark = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("torch", "transformers", "litert_torch", "ai_edge_quantizer")),
    reason="needs the export toolchain: pip install 'edgeslm-litert[export]' and "
           "pip install --no-deps litert-torch==0.10.0 litert-converter==0.5.0")


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


@pytest.fixture(scope="module")
def fp32_bundle(bundle_factory):
    return bundle_factory("litert")


def test_fp32_manifest_signatures_and_parity(fp32_bundle, tiny_source):
    m = _manifest(fp32_bundle)
    assert m["format"] == "litert" and m["precision"] == "fp32" and m["context_length"] == 128
    art = m["artifacts"]
    assert art["model"] == "model.tflite" and "model.tflite" in m["files"]
    assert art["signatures"] == {"prefill": {"tokens": 64}, "decode": {"tokens": 1}}
    s = tiny_source.spec
    assert art["kv_cache"] == {"length": 128, "dtype": "float32", "shape": [1, s.num_kv_heads, 128, s.head_dim]}
    p = m["parity"]
    assert p["passed"] and p["top1_agreement"] == 1.0 and p["max_abs_logit_diff"] < 1e-3

    from ai_edge_litert.interpreter import Interpreter

    sigs = Interpreter(str(fp32_bundle / "model.tflite")).get_signature_list()
    assert set(sigs) == {"prefill", "decode"}
    assert "logits" in sigs["decode"]["outputs"] and "logits" not in sigs["prefill"]["outputs"]
    assert len([n for n in sigs["decode"]["inputs"] if n.startswith("kv_")]) == 2 * s.num_layers


def test_engine_hands_the_cache_back_and_takes_threads(fp32_bundle):
    import edgeslm

    with edgeslm.load(fp32_bundle, engine_options={"threads": 1}) as m:
        eng = m.engine
        assert eng.max_context == 128 and eng.prefill_len == 64
        ids = m.tokenizer.encode("The capital of France is")
        eng.prefill(ids)
        k0 = eng.cache["kv_cache_k_0"]
        assert k0.shape == (1, eng.spec.num_kv_heads, 128, eng.spec.head_dim)
        # a short prompt runs as one padded prefill window: rows past it stay empty; pad rows
        # (len(ids) .. window) hold values no query sees until they are overwritten
        assert np.abs(k0[0, :, :len(ids)]).sum() > 0 and not np.abs(k0[0, :, eng.prefill_len:]).any()
        pad_row = k0[0, :, len(ids)].copy()
        eng.decode(5)
        k1 = eng.cache["kv_cache_k_0"]
        assert not np.array_equal(k1[0, :, len(ids)], pad_row) and eng.position == len(ids) + 1
        np.testing.assert_array_equal(k1[0, :, :len(ids)], k0[0, :, :len(ids)])
    with edgeslm.load(fp32_bundle, engine_options={"xnnpack": False}) as m:  # builtin kernels agree
        assert len(m.generate("The capital of France is", max_new_tokens=4, stop_on_eos=False).token_ids) == 4


def test_dynamic_int8_chunked_prefill_cli_and_chat(tiny_hf, tiny_source, tmp_path, capsys):
    """`edgeslm export --format litert --precision dynamic-int8 --option prefill_len=8` then `run --chat`;
    prompts longer than 8 tokens prefill in chunks (widened backwards) and match one-token steps."""
    import edgeslm
    from edgeslm.cli import main

    out = tmp_path / "litert-dyn"
    assert main(["export", str(tiny_hf), "--format", "litert", "--precision", "dynamic-int8", "-o", str(out),
                 "--context-length", "128", "--parity-tokens", "8", "--option", "prefill_len=8"]) == 0
    m = _manifest(out)
    assert m["precision"] == "dynamic-int8" and m["artifacts"]["signatures"]["prefill"]["tokens"] == 8
    q = m["quantization"]
    assert q["library"] == "ai-edge-quantizer" and q["recipe"] == "dynamic_wi8_afp32"
    assert q["bytes_after"] < 0.6 * q["bytes_before"]
    assert m["parity"]["min_top1_agreement"] == 0.85 and m["parity"]["passed"]
    capsys.readouterr()
    assert main(["run", str(out), "--chat", "--prompt", "Hello", "-n", "6"]) == 0
    io = capsys.readouterr()
    assert "tok/s decode" in io.err and io.out.strip()

    ids = tiny_source.tokenizer.encode("def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1)")
    assert len(ids) > 20
    with edgeslm.load(out) as a, edgeslm.load(out) as b:
        whole = a.engine.prefill(ids)  # chunks of 8, the last one widened
        b.engine.prefill(ids[:1])
        for t in ids[1:-1]:
            b.engine.decode(t)
        np.testing.assert_allclose(b.engine.decode(ids[-1]), whole, atol=1e-3)
        a.engine.reset()
        short = a.engine.prefill(ids[:5])  # fewer tokens than the signature: padded
        b.engine.reset()
        b.engine.prefill(ids[:4])
        np.testing.assert_allclose(b.engine.decode(ids[4]), short, atol=1e-3)


def test_unknown_precision_is_refused(tiny_source, tmp_path):
    from edgeslm.errors import ExportError
    from edgeslm.exporting import export_model

    with pytest.raises(ExportError, match="dynamic-int8"):
        export_model(tiny_source, tmp_path / "x", format="litert", precision="int4")
