"""LiteRT engine: ``prefill``/``decode`` signatures run through LiteRT's CompiledModel (XNNPACK on CPU).

The KV cache is a fixed (1, kv, C, hd) float32 tensor per layer that goes into every call and
comes back updated. It never passes through numpy: the engine holds two sets of the runtime's
own TensorBuffers, binds one set as the signature's cache inputs and the other as its cache
outputs, and swaps them after each call (what LiteRT-LM does with the same .tflite). Per token
only the token id, its position (4 bytes each) and the logits (V floats) cross into Python;
the interpreter's signature runner copied the whole cache in and out instead (SmolLM2 at
cache 512: 2 x 23.6 MB per token). The ``prefill`` signature has a fixed length T (manifest
``artifacts.signatures.prefill.tokens``) and returns no logits, so a prompt of n tokens runs
as::

    prefill chunks over ids[:-1]   T tokens each; a short last chunk is widened backwards over
                                   tokens already cached (recomputed, same values) or, when
                                   fewer than T tokens exist at all, padded at the end (the pad
                                   rows lie past the position and are overwritten before use)
    decode(ids[-1])                -> logits

Cache rows at and past the position are masked in the graph and overwritten before any query
sees them, so ``reset`` and ``truncate`` only move the position (the buffers are zeroed once,
at load: the runtime hands them out uninitialized).

Options:
    threads   CPU threads (default: the runtime's choice)
    xnnpack   True (default) uses LiteRT's default CPU delegate XNNPACK; False runs builtin kernels
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from edgeslm.errors import BundleError, EngineOptionError, GenerationError
from edgeslm.options import flag
from edgeslm.runtime.engine import Engine, EngineOption

# LiteRT's native log lines when a CompiledModel, its environment and its buffers come up and go
# away (accelerator registry, the optional vendor plugins it probes for): informational only.
_CHATTER = ("INFO: ", "WARNING: [npu_registry", "WARNING: [compiler_plugin", "\u2514 Could not load shared library")


class LiteRTEngine(Engine):
    name = "litert"
    known_options = {
        "threads": EngineOption("int", "CPU threads"),
        "xnnpack": EngineOption("bool", "use the XNNPACK delegate (default true)"),
    }

    def __init__(self, bundle, threads: int | None = None, xnnpack: bool = True, **options: Any):
        super().__init__(bundle, threads=threads, xnnpack=xnnpack, **options)
        try:
            from ai_edge_litert.compiled_model import (CompiledModel, CpuKernelMode, CpuOptions,
                                                       HardwareAccelerator, Options)
        except ImportError as exc:  # pragma: no cover - only without the runtime
            from edgeslm.errors import BackendNotInstalledError

            raise BackendNotInstalledError(f"the LiteRT runtime is needed: pip install edgeslm-litert ({exc})") from exc
        from edgeslm.quiet import native_stderr, native_teardown_quiet

        art = bundle.manifest["artifacts"]
        path = bundle.artifact("model")
        use_xnnpack = flag(xnnpack, "xnnpack", EngineOptionError)
        self.model = None
        cpu = CpuOptions(num_threads=int(threads or 0), kernel_mode=None if use_xnnpack else CpuKernelMode.BUILTIN)
        try:
            with native_stderr(drop=_CHATTER):
                self.model = CompiledModel.from_file(
                    str(path), options=Options(hardware_accelerators=HardwareAccelerator.CPU, cpu_options=cpu))
                sigs = self.model.get_signature_list()
                self.cache_names = [n for n in sigs["decode"]["inputs"] if n.startswith("kv_")]
                # per signature: its token/position inputs (+ logits for decode), written/read each call
                self._io = {sig: {n: self.model.create_input_buffer_by_name(sig, n) for n in ("tokens", "input_pos")}
                            for sig in ("prefill", "decode")}
                self._logits = self.model.create_output_buffer_by_name("decode", "logits")
                # two cache sets, input and output of every call, swapped after it; both signatures
                # take the same (1, kv, C, hd) tensors, so the decode buffers serve prefill too
                self._kv_in, self._kv_out = ({n: self.model.create_input_buffer_by_name("decode", n)
                                              for n in self.cache_names} for _ in range(2))
                native_teardown_quiet()  # the first buffer write brings up an environment that logs at exit
                details = self.model.get_input_tensor_details("decode")
                # zeroed once: the runtime hands buffers out uninitialized (shapes from the model's
                # details; TensorBuffer.get_tensor_details would bring up a process-wide environment)
                prefill_details = self.model.get_input_tensor_details("prefill")
                for sig, d in (("decode", details), ("prefill", prefill_details)):
                    for n, buf in self._io[sig].items():
                        buf.write(np.zeros(d[n]["shape"], dtype=np.int32))
                for n in self.cache_names:
                    for buf in (self._kv_in[n], self._kv_out[n]):
                        buf.write(np.zeros(details[n]["shape"], dtype=np.float32))
                self.vocab = int(np.prod(self.model.get_output_tensor_details("decode")["logits"]["shape"]))
        except Exception as exc:
            raise BundleError(f"ai_edge_litert cannot load {path.name} with prefill/decode signatures: {exc}") from exc
        try:
            self.prefill_len = int(art["signatures"]["prefill"]["tokens"])
            self.cache_len = int(art["kv_cache"]["length"])
            shape = [int(d) for d in art["kv_cache"]["shape"]]
            wanted = [int(d) for d in details[self.cache_names[0]]["shape"]]
            if shape != wanted or self.prefill_len < 1 or self.cache_len != shape[2]:
                raise ValueError(f"kv_cache shape {shape} (model: {wanted}), length {self.cache_len}, "
                                 f"prefill {self.prefill_len}")
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise BundleError(f"{bundle.source}: 'artifacts.signatures'/'artifacts.kv_cache' are malformed "
                              f"({type(exc).__name__}: {exc})") from None
        self.cache_shape = tuple(shape)  # (1, kv, C, hd)
        self.reset()

    @property
    def max_context(self) -> int:
        return self.cache_len

    # -- the contract ---------------------------------------------------------------------
    def reset(self) -> None:
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

    @property
    def cache(self) -> dict[str, np.ndarray]:
        """A copy of the cache as it stands, ``{kv_cache_k_0: (1, kv, C, hd), ...}`` (for inspection:
        the engine itself never reads it back)."""
        self._alive()
        size = int(np.prod(self.cache_shape))
        return {n: b.read(size, np.float32).reshape(self.cache_shape) for n, b in self._kv_in.items()}

    def close(self) -> None:
        if self.model is None:
            return
        from edgeslm.quiet import native_stderr

        with native_stderr(drop=_CHATTER):  # the accelerators' teardown lines
            self._io = self._logits = self._kv_in = self._kv_out = None
            self.model.close()
            self.model = None

    # -- steps ----------------------------------------------------------------------------
    def _alive(self) -> None:
        if self.model is None:
            raise GenerationError("the engine is closed")

    def _prefill_all(self, ids: list[int]) -> None:
        t = self.prefill_len
        for i in range(0, len(ids), t):
            chunk = ids[i:i + t]
            seq = self.tokens + chunk  # every token the cache will hold after this chunk
            end = len(seq)
            start = max(0, end - t)  # widen a short chunk backwards over cached tokens
            window = seq[start:end] + [0] * (t - (end - start))  # pad only when end < t
            self._run("prefill", window, np.arange(start, start + t, dtype=np.int32))
            self.tokens = seq
            self.position = end

    def _step(self, token: int) -> np.ndarray:
        self._run("decode", [token], np.array([self.position], dtype=np.int32), {"logits": self._logits})
        self.tokens.append(token)
        self.position += 1
        return self._logits.read(self.vocab, np.float32)  # (vocab,) from (1, 1, V) ((1, V) before LiteRT-LM)

    def _run(self, sig: str, tokens: list[int], pos: np.ndarray, outputs: dict | None = None) -> None:
        io = self._io[sig]
        io["tokens"].write(np.asarray([tokens], dtype=np.int32))  # (1, T)
        io["input_pos"].write(pos)  # (T,)
        self.model.run_by_name(sig, {**io, **self._kv_in}, {**(outputs or {}), **self._kv_out})
        self._kv_in, self._kv_out = self._kv_out, self._kv_in  # this call's output cache is the next one's input

