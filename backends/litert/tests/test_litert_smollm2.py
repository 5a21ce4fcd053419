"""SmolLM2-135M to LiteRT dynamic int8 (slow: ~5-8 min, ~4 GB RAM): parity >= 85% and a chat answer."""

from __future__ import annotations

import importlib.util

import pytest

pytest.importorskip("ai_edge_litert")


@pytest.mark.slow
def test_smollm2_dynamic_int8_parity_and_chat(smollm2_source, tmp_path_factory):
    import edgeslm
    from edgeslm.exporting import export_model

    if importlib.util.find_spec("litert_torch") is None:
        pytest.skip("needs: pip install --no-deps litert-torch==0.10.0 litert-converter==0.5.0")
    b = export_model(smollm2_source, tmp_path_factory.mktemp("smollm2") / "litert-dyn", format="litert",
                     precision="dynamic-int8", context_length=512)
    m = b.manifest
    p = m["parity"]
    assert p["passed"] and p["top1_agreement"] >= 0.85, p
    assert m["artifacts"]["signatures"]["prefill"]["tokens"] == 64 and m["artifacts"]["kv_cache"]["length"] == 512
    assert m["files"]["model.tflite"]["bytes"] < 200e6
    with edgeslm.load(b.path) as model:
        res = model.chat([{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=24)
    assert "Paris" in res.text, res.text
