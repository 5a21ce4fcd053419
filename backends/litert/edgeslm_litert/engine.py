"""LiteRT engine: ``prefill``/``decode`` signature runners on ``ai_edge_litert`` (XNNPACK on CPU).

The KV cache is a fixed (1, kv, C, hd) float32 array per layer that goes into every call and
comes back updated; the engine hands it back the next step. The ``prefill`` signature has a fixed
length T (manifest ``artifacts.signatures.prefill.tokens``) and returns no logits, so a prompt
of n tokens runs as::

    prefill chunks over ids[:-1]   T tokens each; a short last chunk is widened backwards over
                                   tokens already cached (recomputed, same values) or, when
                                   fewer than T tokens exist at all, padded at the end (the pad
                                   rows lie past the position and are overwritten before use)
    decode(ids[-1])                -> logits

Options:
    threads   interpreter threads (default: the runtime's choice)
    xnnpack   True (default) uses LiteRT's default delegate XNNPACK; False runs builtin kernels
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from edgeslm.errors import BundleError, EngineOptionError, GenerationError
from edgeslm.options import flag
from edgeslm.runtime.engine import Engine, EngineOption


class LiteRTEngine(Engine):
    name = "litert"
    known_options = {
        "threads": EngineOption("int", "interpreter threads"),
        "xnnpack": EngineOption("bool", "use the XNNPACK delegate (default true)"),
    }

    def __init__(self, bundle, threads: int | None = None, xnnpack: bool = True, **options: Any):
        super().__init__(bundle, threads=threads, xnnpack=xnnpack, **options)
        try:
            from ai_edge_litert.interpreter import Interpreter, OpResolverType
        except ImportError as exc:  # pragma: no cover - only without the runtime
            from edgeslm.errors import BackendNotInstalledError

            raise BackendNotInstalledError(f"the LiteRT runtime is needed: pip install edgeslm-litert ({exc})") from exc
        art = bundle.manifest["artifacts"]
        path = bundle.artifact("model")
        kw: dict[str, Any] = {"model_path": str(path)}
        if threads:
            kw["num_threads"] = int(threads)
        if not flag(xnnpack, "xnnpack", EngineOptionError):
            kw["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            self.interpreter = Interpreter(**kw)
            from edgeslm.quiet import native_stderr

            with native_stderr(drop=("INFO: Created TensorFlow Lite",)):
                self.interpreter.allocate_tensors()  # the delegate's one-time INFO line, not the user's business
            sigs = self.interpreter.get_signature_list()
            self._prefill = self.interpreter.get_signature_runner("prefill")
            self._decode = self.interpreter.get_signature_runner("decode")
        except Exception as exc:
            raise BundleError(f"ai_edge_litert cannot load {path.name} with prefill/decode signatures: {exc}") from exc
        self.cache_names = [n for n in sigs["decode"]["inputs"] if n.startswith("kv_")]
        try:
            self.prefill_len = int(art["signatures"]["prefill"]["tokens"])
            self.cache_len = int(art["kv_cache"]["length"])
            shape = [int(d) for d in art["kv_cache"]["shape"]]
            wanted = [int(d) for d in self._decode.get_input_details()[self.cache_names[0]]["shape"]]
            if shape != wanted or self.prefill_len < 1 or self.cache_len != shape[2]:
                raise ValueError(f"kv_cache shape {shape} (model: {wanted}), length {self.cache_len}, "
                                 f"prefill {self.prefill_len}")
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise BundleError(f"{bundle.source}: 'artifacts.signatures'/'artifacts.kv_cache' are malformed "
                              f"({type(exc).__name__}: {exc})") from None
        self._empty = np.zeros(shape, dtype=np.float32)  # (1, kv, C, hd)
        self.reset()

    @property
    def max_context(self) -> int:
        return self.cache_len

    # -- the contract ---------------------------------------------------------------------
    def reset(self) -> None:
        self.cache = {n: self._empty for n in self.cache_names}
        self.tokens: list[int] = []  # what the cache holds, for widened prefill chunks
        self.position = 0

    def prefill(self, token_ids: Sequence[int]) -> np.ndarray:
        ids = self.check_tokens(token_ids)
        self._alive()
        self._prefill_all([int(t) for t in ids[:-1]])
        return self._step(int(ids[-1]))

    def decode(self, token_id: int) -> np.ndarray:
        ids = self.check_tokens([token_id])
        self._alive()
        return self._step(int(ids[0]))

    def truncate(self, length: int) -> bool:
        """Static slots: rows at and past ``length`` are masked by position and overwritten
        before use, so cutting the cache is moving the position back."""
        if not 0 <= length <= self.position:
            return False
        if length == 0:
            return super().truncate(0)
        self.tokens = self.tokens[:length]
        self.position = length
        return True

    def vendor_runtimes(self):
        """LiteRT-LM on model.litertlm, when the export wrote it (litertlm_file.py)."""
        if not ((self.bundle.manifest.get("interop") or {}).get("litert-lm") or {}).get("written"):
            return {}
        from functools import partial

        from .litertlm_file import vendor_check

        return {"litert-lm": partial(vendor_check, self.bundle)}

    def close(self) -> None:
        self._prefill = self._decode = self.interpreter = None

    # -- steps ----------------------------------------------------------------------------
    def _alive(self) -> None:
        if self.interpreter is None:
            raise GenerationError("the engine is closed")

    def _prefill_all(self, ids: list[int]) -> None:
        t = self.prefill_len
        for i in range(0, len(ids), t):
            chunk = ids[i:i + t]
            seq = self.tokens + chunk  # every token the cache will hold after this chunk
            end = len(seq)
            start = max(0, end - t)  # widen a short chunk backwards over cached tokens
            window = seq[start:end] + [0] * (t - (end - start))  # pad only when end < t
            self._run(self._prefill, window, np.arange(start, start + t, dtype=np.int32))
            self.tokens = seq
            self.position = end

    def _step(self, token: int) -> np.ndarray:
        out = self._run(self._decode, [token], np.array([self.position], dtype=np.int32))
        self.tokens.append(token)
        self.position += 1
        logits = np.asarray(out["logits"], dtype=np.float32)  # (1, 1, V); (1, V) in bundles before LiteRT-LM
        return logits.reshape(-1, logits.shape[-1])[-1]  # (vocab,)

    def _run(self, runner, tokens: list[int], pos: np.ndarray) -> dict[str, np.ndarray]:
        out = runner(tokens=np.asarray([tokens], dtype=np.int32), input_pos=pos, **self.cache)
        self.cache = {n: out[n] for n in self.cache_names}  # (1, kv, C, hd) each, handed back next step
        return out

