"""The Generator: text in, text out, on top of any Engine.

Written once for every backend: tokenization, chat templates, sampling, stop strings, EOS,
max tokens, streaming, and per-call metrics named after the OpenTelemetry GenAI conventions
(time to first token, time per output token, input/output token usage).

KV-cache prefix reuse: the Generator remembers which token ids the engine's cache holds (the
last prompt and the tokens decoded after it). When the next prompt starts with the same ids --
a chat conversation re-rendered with one more turn -- only the new suffix is prefilled; when it
diverges part-way, the engine keeps the common prefix if it can (:meth:`Engine.truncate`), else
the cache is reset and the whole prompt prefilled. ``Generator(..., reuse_cache=False)`` turns
this off. At least one prompt token is always run, since logits come only from running one.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from ..errors import GenerationError
from ..tokenizer import IncrementalDecoder, Tokenizer
from .engine import Engine
from .sampling import sample


@dataclass
class GenerationConfig:
    max_new_tokens: int = 128  # stop after this many generated tokens
    temperature: float = 0.0  # 0 = greedy; > 0 samples
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0  # nucleus sampling mass; 1.0 = off
    seed: int | None = None  # fixes sampling for reproducible runs
    stop: tuple[str, ...] = ()  # strings that end generation (not included in the text)
    stop_on_eos: bool = True  # end at the model's EOS / end-of-turn tokens

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(self.stop)
        if self.max_new_tokens < 1:
            raise GenerationError("max_new_tokens must be at least 1")
        if not (isinstance(self.temperature, (int, float)) and 0 <= self.temperature < float("inf")):
            raise GenerationError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not 0.0 < self.top_p <= 1.0:  # also refuses NaN
            raise GenerationError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise GenerationError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise GenerationError(f"seed must be an integer >= 0, got {self.seed!r}")


@dataclass
class GenerationMetrics:
    prompt_tokens: int = 0  # gen_ai.usage.input_tokens
    output_tokens: int = 0  # gen_ai.usage.output_tokens
    time_to_first_token_s: float = 0.0  # gen_ai.server.time_to_first_token
    time_per_output_token_s: float = 0.0  # gen_ai.server.time_per_output_token (decode steps)
    cached_tokens: int = 0  # prompt tokens already in the KV cache, not prefilled again (reuse)
    prefill_s: float = 0.0
    decode_s: float = 0.0  # wall time of the decode loop
    engine_decode_s: float = 0.0  # of which inside Engine.decode
    total_s: float = 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        steps = max(self.output_tokens - 1, 0)
        return steps / self.decode_s if self.decode_s > 0 else 0.0

    @property
    def prefill_tokens_per_s(self) -> float:
        return (self.prompt_tokens - self.cached_tokens) / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def generator_overhead(self) -> float:
        """Share of the decode loop spent outside the engine (sampling, detokenizing, stops)."""
        return 1.0 - self.engine_decode_s / self.decode_s if self.decode_s > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(decode_tokens_per_s=self.decode_tokens_per_s, prefill_tokens_per_s=self.prefill_tokens_per_s,
                 generator_overhead=self.generator_overhead)
        return d


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: str  # "eos" | "stop" | "length" | "cancelled" (Stream.close() before the end)
    metrics: GenerationMetrics = field(default_factory=GenerationMetrics)


class Stream:
    """Iterator over text pieces; ``.result`` holds the GenerationResult once exhausted."""

    def __init__(self, pieces: Iterator[str]):
        self._pieces = pieces
        self.result: GenerationResult | None = None

    def __iter__(self):
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        """Stop generating now (Ctrl-C, a client gone). ``.result`` then holds what was generated
        so far with ``finish_reason="cancelled"``; the engine's cache stays usable for reuse."""
        self._pieces.close()


class Generator:
    """Generates text with an engine and a tokenizer. Not thread-safe: one call at a time."""

    def __init__(self, engine: Engine, tokenizer: Tokenizer, reuse_cache: bool = True):
        self.engine = engine
        self.tokenizer = tokenizer
        #: continue the engine's cache when a prompt starts with what it holds (see module doc)
        self.reuse_cache = reuse_cache
        #: called with every finished GenerationResult (the telemetry agent hooks in here)
        self.listeners: list[Callable[[GenerationResult], None]] = []
        self._held: list[int] | None = None  # token ids in the engine's cache; None = unknown

    def forget_cache(self) -> None:
        """Reset the engine's cache and forget what it held (the next call prefills in full)."""
        self._held = None
        self.engine.reset()

    # -- public API ---------------------------------------------------------------------
    def generate(self, prompt: str | Sequence[int], config: GenerationConfig | None = None, **kw) -> GenerationResult:
        stream = self.stream(prompt, config, **kw)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def stream(self, prompt: str | Sequence[int], config: GenerationConfig | None = None, **kw) -> Stream:
        config = config or GenerationConfig(**kw)
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
        if not ids:
            raise GenerationError("empty prompt: give at least one token of text")
        stream = Stream(iter(()))
        stream._pieces = self._run(ids, config, stream)
        return stream

    def chat(self, messages: Iterable[dict], config: GenerationConfig | None = None, **kw) -> GenerationResult:
        return self.generate(self.tokenizer.apply_chat_template(messages), config, **kw)

    def stream_chat(self, messages: Iterable[dict], config: GenerationConfig | None = None, **kw) -> Stream:
        return self.stream(self.tokenizer.apply_chat_template(messages), config, **kw)

    # -- the loop -----------------------------------------------------------------------
    def _prefill(self, ids: list[int]) -> tuple[np.ndarray, int]:
        """Bring the cache to ``ids`` and return (next-token logits, prompt tokens reused)."""
        eng, held = self.engine, self._held
        self._held = None  # unknown until the engine call returns (Ctrl-C may land inside it)
        keep = 0
        if self.reuse_cache and held is not None and eng.position == len(held):
            keep = min(_common_prefix(held, ids), len(ids) - 1)  # run >= 1 token for logits
            if keep < len(held) and not (keep > 0 and eng.truncate(keep)):
                keep = 0
        if keep == 0:
            eng.reset()
        logits = eng.prefill(ids[keep:])
        self._held = list(ids)
        return logits, keep

    def _decode(self, token: int) -> np.ndarray:
        held, self._held = self._held, None
        logits = self.engine.decode(token)
        if held is not None:
            held.append(token)
            self._held = held
        return logits

    def _run(self, ids: list[int], config: GenerationConfig, stream: Stream) -> Iterator[str]:
        eng, tok = self.engine, self.tokenizer
        rng = np.random.default_rng(config.seed) if config.temperature > 0 else None
        eos = set(tok.eos_token_ids) if config.stop_on_eos else set()
        m = GenerationMetrics(prompt_tokens=len(ids))
        decoder = IncrementalDecoder(tok)
        pending = ""  # text decoded but held back because it may begin a stop string
        text_parts: list[str] = []
        out_ids: list[int] = []
        finish = "length"

        t0 = time.perf_counter()
        logits, m.cached_tokens = self._prefill(ids)
        m.prefill_s = time.perf_counter() - t0
        t_loop = time.perf_counter()
        try:
            while True:
                token = sample(logits, rng, config.temperature, config.top_k, config.top_p)
                if not out_ids:
                    m.time_to_first_token_s = time.perf_counter() - t0
                if token in eos:
                    finish = "eos"
                    break
                out_ids.append(token)
                pending += decoder.push(token)
                hit = _find_stop(pending, config.stop)
                if hit is not None:
                    pending = pending[:hit]
                    finish = "stop"
                    break
                safe = len(pending) - _held_back(pending, config.stop)
                if safe > 0:
                    piece, pending = pending[:safe], pending[safe:]
                    text_parts.append(piece)
                    yield piece
                if len(out_ids) >= config.max_new_tokens:
                    break
                if eng.position >= eng.max_context:
                    finish = "length"
                    break
                t_e = time.perf_counter()
                logits = self._decode(token)
                m.engine_decode_s += time.perf_counter() - t_e
        except GeneratorExit:  # Stream.close(): finish quietly with what was shown so far
            finish, pending = "cancelled", ""
        if pending:
            text_parts.append(pending)
            yield pending
        end = time.perf_counter()
        m.decode_s = end - t_loop
        m.total_s = end - t0
        m.output_tokens = len(out_ids)
        m.time_per_output_token_s = m.decode_s / (len(out_ids) - 1) if len(out_ids) > 1 else 0.0
        result = GenerationResult(text="".join(text_parts), token_ids=out_ids, finish_reason=finish, metrics=m)
        stream.result = result
        for listener in self.listeners:
            listener(result)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
