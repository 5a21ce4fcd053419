"""A tiny real Generator (fake engine + a tokenizers WordLevel tokenizer) for agent tests.

No model files: the engine's logits always point at the next word of a fixed cycle, so every
call produces real GenerationResults with real GenerationMetrics through edgeslm's Generator.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from edgeslm.runtime.engine import Engine
from edgeslm.runtime.generator import Generator
from edgeslm.spec import ModelSpec
from edgeslm.tokenizer import Tokenizer

WORDS = ["<unk>", "</s>", "the", "edge", "device", "runs", "a", "small", "model", "fast"]


class CycleEngine(Engine):
    name = "fake"

    def prefill(self, token_ids):
        ids = self.check_tokens(token_ids)
        self.position += ids.size
        return self._logits(int(ids[-1]))

    def decode(self, token_id):
        self.check_tokens([token_id])
        self.position += 1
        return self._logits(int(token_id))

    def reset(self):
        self.position = 0

    def _logits(self, last: int) -> np.ndarray:
        out = np.zeros(self.spec.vocab_size, dtype=np.float32)
        nxt = last + 1 if 2 <= last + 1 < len(WORDS) else 2
        out[nxt] = 10.0
        return out


class FakeModel:
    """Quacks like LoadedModel: .generator, .generate, .chat, .bundle (manifest), .engine."""

    def __init__(self, fail_on: str | None = None):
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers.models import WordLevel
        from tokenizers.pre_tokenizers import Whitespace

        backend = HFTokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
        backend.pre_tokenizer = Whitespace()
        spec = ModelSpec(architecture="llama", vocab_size=len(WORDS), hidden_size=8, num_layers=1, num_heads=1,
                         num_kv_heads=1, head_dim=8, intermediate_size=8, context_length=64, eos_token_ids=(1,),
                         name="fake-cycle")
        self.bundle = SimpleNamespace(spec=spec, manifest={"format": "fake", "name": "fake-cycle", "precision": "fp32"},
                                      path=".")
        self.engine = CycleEngine(self.bundle)
        tok = Tokenizer(backend, eos_token_ids=(1,), chat_template="{% for m in messages %}{{ m.content }} {% endfor %}")
        self.generator = Generator(self.engine, tok)
        self.fail_on = fail_on

    def generate(self, prompt, **kw):
        if self.fail_on and prompt == self.fail_on:
            from edgeslm.errors import GenerationError

            raise GenerationError("refused by the fake")
        return self.generator.generate(prompt, **kw)

    def chat(self, messages, **kw):
        return self.generator.chat(messages, **kw)
