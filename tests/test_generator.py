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


def test_engine_reset_between_calls(tok):
    eng = ScriptedEngine(script_for(tok, " ok"), tok.vocab_size)
    gen = Generator(eng, tok)
    gen.generate("hello")
    gen.generate("hello")
    assert eng.calls.count(("prefill", len(tok.encode("hello")))) == 2
    assert eng.position == len(tok.encode("hello")) + len(tok.encode(" ok"))  # fresh cache each call


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
