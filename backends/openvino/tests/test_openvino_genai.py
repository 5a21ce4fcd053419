"""The OpenVINO bundle opened by OpenVINO GenAI's own LLMPipeline: same greedy tokens as our engine.

Tiny models of every family (fast) and SmolLM2 int8 (slow). The pipeline is opened with the
precision hints our engine uses (genai.EXACT_PROPERTIES); its defaults (bf16, u8 KV cache on
AVX512-BF16 CPUs) change random tiny models' tokens.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("openvino_genai", reason="needs: pip install 'edgeslm-openvino[genai]'")
pytestmark = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("torch", "transformers", "nncf", "openvino_tokenizers")),
    reason="needs the export extra: pip install 'edgeslm-openvino[export]'")

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"]


def _genai_greedy(bundle_dir, prompt_ids, n, **props):
    import openvino as ov
    import openvino_genai as og

    from edgeslm_openvino.genai import EXACT_PROPERTIES

    pipe = og.LLMPipeline(str(bundle_dir), "CPU", **{**EXACT_PROPERTIES, **props})
    cfg = og.GenerationConfig()
    cfg.max_new_tokens, cfg.do_sample, cfg.ignore_eos = n, False, True
    result = pipe.generate(ov.Tensor(np.array([prompt_ids], dtype=np.int64)), cfg)
    return list(result.tokens[0]), pipe


def _ours(bundle_dir, prompt_ids, n):
    import edgeslm
    from edgeslm.testing import engine_greedy

    with edgeslm.load(bundle_dir) as m:
        return engine_greedy(m.engine, prompt_ids, n)


@pytest.mark.parametrize("family", FAMILIES)
def test_llm_pipeline_greedy_equals_engine(bundle_factory, family):
    bundle = bundle_factory("openvino", family=family)
    manifest = json.loads((bundle / "manifest.json").read_text())
    genai = manifest["interop"]["openvino-genai"]
    assert genai["written"], genai
    assert set(genai["files"]) <= set(manifest["files"])  # hashed like every file
    prompt = [5, 17, 42, 99, 7, 3, 250]
    theirs, _ = _genai_greedy(bundle, prompt, 12)
    assert theirs == _ours(bundle, prompt, 12)


def test_tokenizer_ir_matches_ours(bundle_factory):
    import openvino_genai as og

    import edgeslm

    bundle = bundle_factory("openvino")
    with edgeslm.load(bundle) as m:
        tok = m.tokenizer
        text = tok.apply_chat_template([{"role": "user", "content": "the quick brown fox"}])
        ours = tok.encode(text)
    theirs = og.Tokenizer(str(bundle)).encode(text).input_ids.data[0].tolist()
    assert theirs == ours


@pytest.mark.slow
def test_smollm2_int8_in_llm_pipeline(smollm2_openvino_int8):
    """SmolLM2 int8: LLMPipeline's greedy answer to a chat prompt equals our engine's, ids and text."""
    import openvino_genai as og

    import edgeslm
    from edgeslm.testing import engine_greedy

    out = smollm2_openvino_int8.path
    with edgeslm.load(out) as m:
        text = m.tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
        prompt = m.tokenizer.encode(text)
        ours = engine_greedy(m.engine, prompt, 16)
        ours_text = m.tokenizer.decode(ours)
    theirs, pipe = _genai_greedy(out, prompt, 16)
    assert theirs == ours
    assert og.Tokenizer(str(out)).encode(text).input_ids.data[0].tolist() == prompt
    cfg = og.GenerationConfig()
    cfg.max_new_tokens, cfg.do_sample, cfg.ignore_eos, cfg.apply_chat_template = 16, False, True, False
    assert pipe.generate(text, cfg) == ours_text


def test_verify_vendor_runs_openvino_genai(bundle_factory, verify_vendor):
    """`edgeslm verify --vendor` opens the bundle in openvino-genai and finds the same greedy tokens."""
    verify_vendor(bundle_factory("openvino"), "openvino-genai")
