"""llama.cpp (llama-cpp-python) wrapped in edgeslm's Engine contract — for benchmarks only.

Wrapping the peer in the same contract means the same Generator loop, the same prompt tokens,
the same greedy decoding and the same parity code measure it; nothing is special-cased.
llama-cpp-python is an optional benchmark dependency (it builds llama.cpp from source).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from edgeslm.runtime.engine import Engine
from edgeslm.spec import ModelSpec


class LlamaCppEngine(Engine):
    name = "llama.cpp"

    def __init__(self, gguf_path: str, spec: ModelSpec, threads: int, n_ctx: int = 512):
        from llama_cpp import Llama

        super().__init__(SimpleNamespace(spec=spec, manifest={"context_length": n_ctx}))
        self.llm = Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads,
                         n_threads_batch=threads, logits_all=False, verbose=False)
        self.path = gguf_path
        self.reset()

    def _logits(self) -> np.ndarray:
        # Without logits_all, llama-cpp-python no longer copies logits into .scores; read the last
        # token's row from the context (the only row llama.cpp computed).
        n_vocab = self.llm.n_vocab()
        return np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(n_vocab,)).astype(np.float32, copy=True)

    def prefill(self, token_ids):
        ids = self.check_tokens(token_ids)
        self.llm.eval(ids.tolist())
        self.position += ids.size
        return self._logits()

    def decode(self, token_id):
        self.check_tokens([token_id])
        self.llm.eval([int(token_id)])
        self.position += 1
        return self._logits()

    def reset(self):
        # Llama.reset() only rewinds the token count; the KV cells of the last sequence would
        # still be attended to, so clear the context's memory too.
        self.llm.reset()
        self.llm._ctx.kv_cache_clear()
        self.position = 0

    def close(self):
        self.llm.close()
