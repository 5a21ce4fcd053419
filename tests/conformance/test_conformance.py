"""Black-box checks every engine passes (fixtures and per-backend skips: conftest.py here).

Each case runs once per installed engine on a tiny fp32 bundle (context 128) and compares it
with the tiny source's own greedy continuation from the Hugging Face torch module.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeslm.errors import GenerationError
from edgeslm.testing import CORPUS

PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):\n",
    "<|im_start|>user\nWhy is the sky blue?<|im_end|>\n<|im_start|>assistant\n",
)
NEW = 16


def _ids(model, text: str) -> list[int]:
    return model.tokenizer.encode(text)


def test_logits_contract(model):
    eng = model.engine
    logits = eng.prefill(_ids(model, PROMPTS[0]))
    assert isinstance(logits, np.ndarray) and logits.shape == (eng.spec.vocab_size,)
    assert logits.dtype == np.float32 and np.isfinite(logits).all()
    step = eng.decode(int(logits.argmax()))
    assert step.shape == (eng.spec.vocab_size,) and np.isfinite(step).all()


@pytest.mark.parametrize("prompt", PROMPTS, ids=["plain", "code", "chat"])
def test_fp32_greedy_equals_source(model, source_greedy, prompt):
    res = model.generate(prompt, max_new_tokens=NEW, stop_on_eos=False)
    assert res.token_ids == source_greedy(_ids(model, prompt), NEW)
    assert res.finish_reason == "length" and res.metrics.output_tokens == NEW


def test_streaming_equals_non_streaming(model):
    for prompt in PROMPTS:
        whole = model.generate(prompt, max_new_tokens=NEW, stop_on_eos=False)
        stream = model.stream(prompt, max_new_tokens=NEW, stop_on_eos=False)
        pieces = list(stream)
        assert "".join(pieces) == whole.text
        assert stream.result.token_ids == whole.token_ids and stream.result.text == whole.text


def test_reset_between_calls(model, source_greedy):
    a, b = PROMPTS[0], PROMPTS[1]
    first = model.generate(a, max_new_tokens=NEW, stop_on_eos=False).token_ids
    other = model.generate(b, max_new_tokens=NEW, stop_on_eos=False).token_ids
    again = model.generate(a, max_new_tokens=NEW, stop_on_eos=False).token_ids
    assert first == again == source_greedy(_ids(model, a), NEW)
    assert other == source_greedy(_ids(model, b), NEW)
    # the engine itself: after reset() a prefill equals a fresh one, and position starts over
    eng = model.engine
    ids = _ids(model, b)
    eng.reset()
    fresh = eng.prefill(ids)
    eng.decode(3)
    eng.reset()
    assert eng.position == 0
    np.testing.assert_allclose(eng.prefill(ids), fresh, rtol=0, atol=1e-4)


def test_position_tracks_the_cache(model):
    eng = model.engine
    eng.reset()
    ids = _ids(model, PROMPTS[2])
    eng.prefill(ids[:5])
    assert eng.position == 5
    eng.prefill(ids[5:])
    assert eng.position == len(ids)
    for t in (10, 11, 12):
        eng.decode(t)
    assert eng.position == len(ids) + 3


def test_prefill_in_pieces_equals_one_prefill(model):
    eng = model.engine
    ids = _ids(model, " ".join(CORPUS))[:40]
    eng.reset()
    whole = eng.prefill(ids)
    eng.reset()
    eng.prefill(ids[:17])
    np.testing.assert_allclose(eng.prefill(ids[17:]), whole, rtol=0, atol=1e-4)


def _long_ids(model, n: int) -> list[int]:
    ids = []
    while len(ids) < n:
        ids += _ids(model, " ".join(CORPUS) + "\n")
    return ids[:n]


def test_long_prompt_up_to_context(model, source_greedy):
    eng = model.engine
    ctx = eng.max_context
    assert ctx == 128  # what bundle_factory asks for
    # a prompt 4 tokens short of the context: the Generator stops itself at the limit
    ids = _long_ids(model, ctx - 4)
    res = model.generate(ids, max_new_tokens=50, stop_on_eos=False)
    assert res.finish_reason == "length" and len(res.token_ids) == 5
    assert res.token_ids == source_greedy(ids, 5)
    assert eng.position == ctx
    # a prompt of exactly the context length is accepted; nothing more fits afterwards
    eng.reset()
    full = _long_ids(model, ctx)
    logits = eng.prefill(full)
    assert int(logits.argmax()) == source_greedy(full, 1)[0] and eng.position == ctx
    with pytest.raises(GenerationError, match="context overflow"):
        eng.decode(5)
    assert eng.position == ctx


def test_bad_input_gives_clear_errors(model, source_greedy):
    eng = model.engine
    vocab = eng.spec.vocab_size
    eng.reset()
    with pytest.raises(GenerationError, match="empty"):
        eng.prefill([])
    with pytest.raises(GenerationError, match="empty"):
        model.generate("", max_new_tokens=4)
    with pytest.raises(GenerationError, match="outside the vocabulary"):
        eng.prefill([5, vocab])
    with pytest.raises(GenerationError, match="outside the vocabulary"):
        eng.prefill([-1])
    with pytest.raises(GenerationError, match="outside the vocabulary"):
        model.generate([1, 2, vocab + 7], max_new_tokens=4)
    with pytest.raises(GenerationError, match="context overflow"):
        eng.prefill(_long_ids(model, eng.max_context + 1))
    assert eng.position == 0  # refused input leaves the cache as it was
    eng.prefill([5, 6])
    with pytest.raises(GenerationError, match="outside the vocabulary"):
        eng.decode(vocab)
    assert eng.position == 2
    # and the engine still works afterwards
    prompt = PROMPTS[0]
    assert model.generate(prompt, max_new_tokens=NEW, stop_on_eos=False).token_ids == \
        source_greedy(_ids(model, prompt), NEW)


def test_prefill_continues_after_decode(model):
    """KV-cache reuse: a prefill after decode steps (the next chat turn) equals a fresh prefill
    of the whole sequence."""
    eng = model.engine
    ids = _ids(model, PROMPTS[2])
    more = _ids(model, " and then the next question, please")
    eng.reset()
    logits = eng.prefill(ids)
    steps = []
    for _ in range(3):
        t = int(logits.argmax())
        steps.append(t)
        logits = eng.decode(t)
    reused = eng.prefill(more)
    assert eng.position == len(ids) + 3 + len(more)
    eng.reset()
    fresh = eng.prefill(ids + steps + more)
    np.testing.assert_allclose(reused, fresh, rtol=0, atol=1e-4)


def test_truncate_then_prefill_equals_fresh(model):
    eng = model.engine
    a = _ids(model, " ".join(CORPUS))[:30]
    b = _ids(model, PROMPTS[1])
    eng.reset()
    eng.prefill(a)
    eng.decode(7)
    if not eng.truncate(12):
        pytest.skip(f"{eng.name} cannot truncate its cache (the Generator resets instead)")
    assert eng.position == 12
    cut = eng.prefill(b)
    eng.reset()
    np.testing.assert_allclose(cut, eng.prefill(a[:12] + b), rtol=0, atol=1e-4)
    assert not eng.truncate(eng.position + 1)  # cannot keep more than it holds


def test_generator_reuse_equals_fresh_prefill(conformance_bundle):
    """Three chat turns through the Generator: the same tokens with and without cache reuse,
    and with reuse every turn after the first prefills only its new suffix."""
    import edgeslm

    def converse(reuse: bool):
        with edgeslm.load(conformance_bundle, reuse_cache=reuse) as m:
            history, outs, cached = [], [], []
            for q in ("Why is the sky blue?", "And the sea?", "Say it shorter."):
                history.append({"role": "user", "content": q})
                res = m.chat(history, max_new_tokens=6, stop_on_eos=False)
                history.append({"role": "assistant", "content": res.text})
                outs.append(res.token_ids)
                cached.append(res.metrics.cached_tokens)
            return outs, cached

    with_reuse, cached = converse(True)
    without, none = converse(False)
    assert with_reuse == without
    assert none == [0, 0, 0] and cached[0] == 0 and all(c > 0 for c in cached[1:])
