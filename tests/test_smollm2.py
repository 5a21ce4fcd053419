"""The real model end to end: SmolLM2-135M-Instruct GGUF -> ONNX bundle -> chat (slow)."""

import json

import pytest

import edgeslm
from edgeslm.testing import requires_export, requires_smollm2

pytestmark = [pytest.mark.slow, requires_export, requires_smollm2]


def test_source_reads_the_gguf_metadata(smollm2_source):
    s = smollm2_source.spec
    assert (s.num_layers, s.hidden_size, s.num_heads, s.num_kv_heads, s.vocab_size) == (30, 576, 9, 3, 49152)
    assert s.tie_word_embeddings and s.bos_token_id == 1 and 2 in s.eos_token_ids
    tok = smollm2_source.tokenizer
    assert tok.add_bos is False and tok.encode("Hello world") == [19556, 905]
    assert tok.decode([2], skip_special_tokens=False) == "<|im_end|>"


def test_fp32_onnx_export_matches_source(smollm2_onnx_bundle):
    m = json.loads((smollm2_onnx_bundle / "manifest.json").read_text())
    p = m["parity"]
    assert p["passed"] and p["prompts"] >= 3 and p["tokens"] >= 3 * 32
    assert p["top1_agreement"] == 1.0
    assert p["kl_mean"] < 1e-6 and p["max_abs_logit_diff"] < 1e-2
    assert abs(p["perplexity_export"] / p["perplexity_source"] - 1) < 1e-3
    assert m["model"]["name"] == "smollm2-135m" and m["model"]["parameters"] > 130e6


def test_chat_answer(smollm2_onnx_bundle):
    with edgeslm.load(smollm2_onnx_bundle) as model:
        res = model.chat([{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=24)
        streamed = "".join(model.stream_chat([{"role": "user", "content": "What is the capital of France?"}],
                                             max_new_tokens=24))
    assert "Paris" in res.text
    assert res.finish_reason == "eos"  # the model ends its turn with <|im_end|>
    assert streamed == res.text
