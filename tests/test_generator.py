"""The Generator on a scripted engine: stop strings, EOS, max tokens, streaming, sampling, metrics."""

import numpy as np
import pytest

from edgeslm.errors import GenerationError
from edgeslm.runtime.generator import GenerationConfig, Generator
from edgeslm.runtime.sampling import sample
from edgeslm.testing import ScriptedEngine, make_tiny_tokenizer
from edgeslm.tokenizer import IncrementalDecoder, Tokenizer


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(backend=make_tiny_tokenizer(), bos_token_id=1, eos_token_ids=(2,), add_bos=False)


def script_for(tok, text, eos=True):
    ids = tok.encode(text)
    return ids + ([2] if eos else [])


def test_greedy_follows_script_and_stops_at_eos(tok):
    eng = ScriptedEngine(script_for(tok, " Paris is the capital."), tok.vocab_size)
    res = Generator(eng, tok).generate("The capital of France is", max_new_tokens=50)
    assert res.text == " Paris is the capital."
    assert res.finish_reason == "eos"
    assert 2 not in res.token_ids
    assert res.metrics.prompt_tokens == len(tok.encode("The capital of France is"))
    assert res.metrics.output_tokens == len(res.token_ids)


def test_max_new_tokens(tok):
    eng = ScriptedEngine(script_for(tok, " Paris is the capital of France."), tok.vocab_size)
    res = Generator(eng, tok).generate("x", max_new_tokens=3)
    assert len(res.token_ids) == 3 and res.finish_reason == "length"


def test_stop_string_is_cut_and_not_streamed(tok):
    eng = ScriptedEngine(script_for(tok, " Paris. Rome. Berlin."), tok.vocab_size)
    gen = Generator(eng, tok)
    stream = gen.stream("x", max_new_tokens=50, stop=("Rome",))
    pieces = list(stream)
    assert "".join(pieces) == " Paris. "
    assert stream.result.finish_reason == "stop"
    assert "Rome" not in stream.result.text


def test_stop_eos_disabled_runs_to_length(tok):
    eng = ScriptedEngine(script_for(tok, " a"), tok.vocab_size)
    res = Generator(eng, tok).generate("x", max_new_tokens=5, stop_on_eos=False)
    assert res.finish_reason == "length" and len(res.token_ids) == 5


def test_streaming_equals_generate_with_multibyte_text(tok):
    text = " Ünïcödé 🙂 ok"
    gen = Generator(ScriptedEngine(script_for(tok, text), tok.vocab_size), tok)
    streamed = "".join(gen.stream("x", max_new_tokens=60))
    assert streamed == text == gen.generate("x", max_new_tokens=60).text


def test_incremental_decoder_never_emits_replacement_chars(tok):
    ids = tok.encode("🙂🙂 Ünï")
    dec = IncrementalDecoder(tok)
    pieces = [dec.push(i) for i in ids]
    assert "".join(pieces) == "🙂🙂 Ünï"
    assert all("\ufffd" not in p for p in pieces)


def test_context_limit_ends_generation(tok):
    eng = ScriptedEngine(script_for(tok, " Paris is the capital of France and of fashion."), tok.vocab_size,
                         max_context=6)
    res = Generator(eng, tok).generate(tok.encode("ab"), max_new_tokens=50)
    assert res.finish_reason == "length"
    assert eng.position <= 6


def test_prompt_longer_than_context_is_a_clear_error(tok):
    eng = ScriptedEngine([5], tok.vocab_size, max_context=4)
    with pytest.raises(GenerationError, match="context overflow"):
        Generator(eng, tok).generate(list(range(3, 10)))


@pytest.mark.parametrize("prompt", ["", []])
def test_empty_prompt(tok, prompt):
    with pytest.raises(GenerationError, match="empty"):
        Generator(ScriptedEngine([5], tok.vocab_size), tok).generate(prompt)


def test_out_of_range_token(tok):
    with pytest.raises(GenerationError, match="outside the vocabulary"):
        Generator(ScriptedEngine([5], tok.vocab_size), tok).generate([tok.vocab_size + 3])


@pytest.mark.parametrize("kw", [{"max_new_tokens": 0}, {"temperature": -1}, {"top_p": 0}])
def test_bad_config(kw):
    with pytest.raises(GenerationError):
        GenerationConfig(**kw)


def test_listeners_receive_results(tok):
    gen = Generator(ScriptedEngine(script_for(tok, " ok"), tok.vocab_size), tok)
    seen = []
    gen.listeners.append(seen.append)
    gen.generate("x")
    gen.generate("y")
    assert [r.text for r in seen] == [" ok", " ok"]
    assert seen[0].metrics.time_to_first_token_s > 0


def test_engine_reset_between_calls_without_reuse(tok):
    eng = ScriptedEngine(script_for(tok, " ok"), tok.vocab_size)
    gen = Generator(eng, tok, reuse_cache=False)
    gen.generate("hello")
    res = gen.generate("hello")
    assert eng.calls.count(("prefill", len(tok.encode("hello")))) == 2
    assert eng.position == len(tok.encode("hello")) + len(tok.encode(" ok"))  # fresh cache each call
    assert res.metrics.cached_tokens == 0


def test_reuse_prefills_only_the_new_suffix(tok):
    eng = ScriptedEngine(script_for(tok, " ok"), tok.vocab_size)
    gen = Generator(eng, tok)
    first = tok.encode("hello there")
    r1 = gen.generate(first)
    # the cache now holds the prompt and every generated token but the last one sampled (EOS)
    held = first + r1.token_ids
    assert eng.position == len(held)
    eng.calls.clear()
    follow = held + tok.encode(" and more")
    r2 = gen.generate(follow)
    assert eng.calls[0] == ("prefill", len(follow) - len(held))  # no reset, no full prefill
    assert r2.metrics.cached_tokens == len(held) and r2.metrics.prompt_tokens == len(follow)
    assert r2.text == r1.text == " ok"


def test_reuse_truncates_to_the_common_prefix_or_resets(tok):
    a, b = tok.encode("hello there"), tok.encode("hello world, again")
    common = next(i for i in range(len(a)) if a[i] != b[i])
    assert common > 0
    eng = ScriptedEngine(script_for(tok, " ok"), tok.vocab_size)
    gen = Generator(eng, tok)
    gen.generate(a)
    eng.calls.clear()
    res = gen.generate(b)
    assert eng.calls[:2] == [("truncate", common), ("prefill", len(b) - common)]
    assert res.metrics.cached_tokens == common
    # the same prompt again: one token must still run to produce logits
    eng.calls.clear()
    res = gen.generate(b)
    assert eng.calls[:2] == [("truncate", len(b) - 1), ("prefill", 1)] and res.text == " ok"
    # an engine that cannot truncate is reset and prefilled in full
    eng = ScriptedEngine(script_for(tok, " ok"), tok.vocab_size, can_truncate=False)
    gen = Generator(eng, tok)
    gen.generate(a)
    eng.calls.clear()
    res = gen.generate(b)
    assert eng.calls[:2] == [("reset", 0), ("prefill", len(b))] and res.metrics.cached_tokens == 0
    # forget_cache() drops what the Generator knew
    gen.generate(a)
    gen.forget_cache()
    eng.calls.clear()
    gen.generate(a)
    assert ("prefill", len(a)) in eng.calls


def test_closing_a_stream_cancels_and_keeps_the_cache_usable(tok):
    eng = ScriptedEngine(script_for(tok, " one two three four five six"), tok.vocab_size)
    gen = Generator(eng, tok)
    seen = []
    gen.listeners.append(seen.append)
    stream = gen.stream("x", max_new_tokens=50)
    shown = [next(stream), next(stream)]
    stream.close()
    assert stream.result.finish_reason == "cancelled" and stream.result.text == "".join(shown)
    assert seen == [stream.result]
    held = tok.encode("x") + stream.result.token_ids[:-1]
    assert eng.position == len(held)
    eng.calls.clear()
    gen.generate(held + tok.encode(" more"))
    assert eng.calls[0] == ("prefill", len(tok.encode(" more")))


def test_sampling_is_seeded_and_respects_top_k():
    logits = np.linspace(0, 5, 50).astype(np.float32)

    def draws(seed):
        rng = np.random.default_rng(seed)
        return [sample(logits, rng, 1.0, top_k=3) for _ in range(200)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)
    assert set(draws(7)) == {47, 48, 49}


def test_top_p_keeps_the_nucleus():
    logits = np.array([10.0, 9.0, 0.0, -5.0], dtype=np.float32)
    rng = np.random.default_rng(0)
    picks = {sample(logits, rng, 1.0, top_p=0.9) for _ in range(300)}
    assert picks == {0, 1}


def test_greedy_is_argmax():
    logits = np.array([0.1, 3.0, 2.0], dtype=np.float32)
    assert sample(logits, None, 0.0) == 1
