"""The LiteRT bundle's model.litertlm opened by LiteRT-LM (litert-lm-api): same greedy answer as
our engine, on tiny models of every family (fast) and SmolLM2 (slow).

LiteRT-LM's Python API takes text and returns text, so the check is: its tokenizer gives our
prompt ids, and its greedy (top_k=1) text equals our engine's greedy tokens (cut at the first
stop token) detokenized by the same tokenizer. Its XNNPACK weight cache goes to a temp dir: in
the bundle it would be an unlisted file.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

pytest.importorskip("ai_edge_litert")
pytest.importorskip("litert_lm", reason="needs: pip install 'edgeslm-litert[vendor]'")
pytestmark = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("torch", "transformers", "litert_torch", "litert_lm_builder")),
    reason="needs the export toolchain: pip install 'edgeslm-litert[export]' and "
           "pip install --no-deps litert-torch==0.10.0 litert-converter==0.5.0")

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"]
PROMPTS = ["the quick brown fox", "a capital city of the world is where the quick brown fox jumps over the lazy "
           "dog and the dog sleeps in the sun all day long"]  # the second is longer than one prefill chunk


def _check(bundle, prompts, n, tmp_path):
    import litert_lm
    from litert_lm import interfaces

    import edgeslm
    from edgeslm.testing import engine_greedy

    with edgeslm.load(bundle) as m:
        eos = set(m.tokenizer.eos_token_ids)
        ours = []
        for prompt in prompts:
            ids = m.tokenizer.encode(prompt)
            toks = engine_greedy(m.engine, ids, n)
            cut = next((i for i, t in enumerate(toks) if t in eos), len(toks))
            ours.append((ids, toks[:cut]))
    engine = litert_lm.Engine(str(bundle / "model.litertlm"), backend=interfaces.Backend.CPU(thread_count=1),
                              cache_dir=str(tmp_path))
    try:
        for prompt, (ids, toks) in zip(prompts, ours):
            assert engine.tokenize(prompt) == ids
            session = engine.create_session(apply_prompt_template=False, max_output_tokens=n,
                                            sampler_config=interfaces.SamplerConfig(top_k=1))
            session.run_prefill([prompt])
            theirs = session.run_decode().texts[0]
            session.close()
            assert theirs == engine.detokenize(toks), (prompt, toks)
    finally:
        engine.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_litert_lm_greedy_equals_engine(bundle_factory, family, tmp_path):
    bundle = bundle_factory("litert", family=family)
    manifest = json.loads((bundle / "manifest.json").read_text())
    lm = manifest["interop"]["litert-lm"]
    assert lm["written"], lm
    assert "model.litertlm" in manifest["files"]  # hashed like every file
    _check(bundle, PROMPTS, 12, tmp_path)
    assert sorted(p.name for p in bundle.iterdir()) == sorted([*manifest["files"], "manifest.json"])  # nothing left


def test_litertlm_metadata(bundle_factory):
    bundle = bundle_factory("litert")
    lm = json.loads((bundle / "manifest.json").read_text())["interop"]["litert-lm"]
    assert lm["stop_tokens"] == [2] and lm["start_token"] == [] and lm["chat_template"]
    assert lm["max_num_tokens"] == 128 and lm["activation"] == "fp32"


def test_conversation_uses_the_chat_template(bundle_factory, tmp_path):
    """LiteRT-LM's Conversation API renders our chat template (list-of-parts contents handled):
    its greedy reply equals our engine's greedy tokens on our rendering of the same messages."""
    import litert_lm
    from litert_lm import interfaces

    import edgeslm
    from edgeslm.testing import engine_greedy

    bundle = bundle_factory("litert")
    with edgeslm.load(bundle) as m:
        prompt = m.tokenizer.encode(m.tokenizer.apply_chat_template([{"role": "user", "content": "the quick fox"}]))
        ours = engine_greedy(m.engine, prompt, 10)
        eos = set(m.tokenizer.eos_token_ids)
    ours = ours[:next((i for i, t in enumerate(ours) if t in eos), len(ours))]
    engine = litert_lm.Engine(str(bundle / "model.litertlm"), backend=interfaces.Backend.CPU(thread_count=1),
                              cache_dir=str(tmp_path))
    try:
        conv = engine.create_conversation(sampler_config=interfaces.SamplerConfig(top_k=1), max_output_tokens=10)
        reply = conv.send_message("the quick fox")
        assert reply.contents[0].text == engine.detokenize(ours)
        conv.close()
    finally:
        engine.close()


@pytest.mark.slow
def test_smollm2_in_litert_lm(smollm2_litert_fp32, tmp_path):
    """SmolLM2 fp32 (cache 256): LiteRT-LM's greedy answer to a chat prompt equals our engine's."""
    import edgeslm

    out = smollm2_litert_fp32.path
    with edgeslm.load(out) as m:
        text = m.tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    _check(out, [text], 16, tmp_path)


def test_verify_vendor_runs_litert_lm(bundle_factory, verify_vendor):
    """`edgeslm verify --vendor` opens the bundle in litert-lm and finds the same greedy tokens."""
    verify_vendor(bundle_factory("litert"), "litert-lm")
