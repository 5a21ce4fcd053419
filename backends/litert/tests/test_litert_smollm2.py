"""SmolLM2-135M to LiteRT (slow, ~4 GB RAM each): fp32 matches the source; dynamic int8 >= 85% and chats."""

from __future__ import annotations

import importlib.util

import pytest

pytest.importorskip("ai_edge_litert")


def _export(source, tmp_path_factory, precision: str):
    """A SmolLM2 LiteRT bundle with a 512-token KV cache (3-6 min each)."""
    from edgeslm.exporting import export_model

    if importlib.util.find_spec("litert_torch") is None:
        pytest.skip("needs: pip install --no-deps litert-torch==0.10.0 litert-converter==0.5.0")
    return export_model(source, tmp_path_factory.mktemp("smollm2") / f"litert-{precision}", format="litert",
                        precision=precision, context_length=512)


@pytest.mark.slow
def test_smollm2_dynamic_int8_parity_and_chat(smollm2_source, tmp_path_factory):
    import edgeslm

    b = _export(smollm2_source, tmp_path_factory, "dynamic-int8")
    m = b.manifest
    p = m["parity"]
    assert p["passed"] and p["top1_agreement"] >= 0.85, p
    assert m["artifacts"]["signatures"]["prefill"]["tokens"] == 64 and m["artifacts"]["kv_cache"]["length"] == 512
    assert m["files"]["model.tflite"]["bytes"] < 200e6
    with edgeslm.load(b.path) as model:
        res = model.chat([{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=24)
    assert "Paris" in res.text, res.text


@pytest.mark.slow
def test_smollm2_fp32_matches_the_source(smollm2_litert_fp32):
    """fp32 .tflite (the session's shared export): greedy top-1 agreement 100% with the source."""
    p = smollm2_litert_fp32.manifest["parity"]
    assert p["passed"] and p["top1_agreement"] == 1.0 and p["kl_mean"] < 1e-6, p
    assert abs(p["perplexity_export"] - p["perplexity_source"]) < 0.01 * p["perplexity_source"]
