"""OpenVINO engine: the KV cache is model state held by the infer request.

A stateful bundle (the default export) takes only ``input_ids`` and returns ``logits``; the
runtime appends each step's keys/values to its internal variables, and ``reset()`` calls
``reset_state()``. A bundle exported with ``stateful=False`` has the cache as graph IO; the
engine then carries it through numpy each step (kept for comparison and for devices whose
plugin lacks state support).

Options:
    device               "CPU" (default), "GPU", "NPU", "AUTO" ... any openvino device name
    threads              INFERENCE_NUM_THREADS (default: the plugin's choice)
    inference_precision  INFERENCE_PRECISION_HINT: "f32" (default; exact parity), "bf16", "f16";
                         "default" leaves the device's own choice (bf16 on AVX512-BF16 CPUs)
    kv_cache_precision   KV_CACHE_PRECISION: default follows inference_precision ("f32" for
                         "f32"), else the device's choice (u8 on recent CPUs)
    performance_hint     PERFORMANCE_HINT (default "LATENCY": one stream, one request)
    cpu_pinning          ENABLE_CPU_PINNING (default: the plugin's choice, on for CPU); False lets
                         the OS move the inference threads (measured: less CPU per token at 2
                         threads on a CPU shared with other busy processes)
    cache_dir            CACHE_DIR for compiled blobs (faster second start on GPU/NPU)
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from edgeslm.errors import BundleError, GenerationError
from edgeslm.runtime.engine import Engine, EngineOption

from .genai import GENAI_INPUTS, extra_inputs


class OpenVINOEngine(Engine):
    name = "openvino"
    known_options = {
        "device": EngineOption("str", "CPU (default), GPU, NPU, AUTO ..."),
        "threads": EngineOption("int", "INFERENCE_NUM_THREADS"),
        "inference_precision": EngineOption("str", "f32 (default), bf16, f16 or default"),
        "kv_cache_precision": EngineOption("str", "KV_CACHE_PRECISION (default follows inference_precision)"),
        "performance_hint": EngineOption("str", "PERFORMANCE_HINT (default LATENCY)"),
        "cpu_pinning": EngineOption("bool", "ENABLE_CPU_PINNING (default: the plugin's choice)"),
        "cache_dir": EngineOption("str", "CACHE_DIR for compiled blobs"),
    }

    def __init__(self, bundle, device: str = "CPU", threads: int | None = None,
                 inference_precision: str | None = "f32", kv_cache_precision: str | None = None,
                 performance_hint: str = "LATENCY", cache_dir: str | None = None, cpu_pinning: bool | None = None,
                 **options: Any):
        super().__init__(bundle, device=device, threads=threads, inference_precision=inference_precision,
                         kv_cache_precision=kv_cache_precision, performance_hint=performance_hint,
                         cpu_pinning=cpu_pinning, **options)
        import openvino as ov

        self.device = str(device)
        self.core = ov.Core()
        if cache_dir:
            self.core.set_property({"CACHE_DIR": str(cache_dir)})
        path = bundle.artifact("model")
        try:
            model = self.core.read_model(str(path))
        except Exception as exc:
            raise BundleError(f"openvino cannot read {path}: {exc}") from exc
        wanted = _config(inference_precision, kv_cache_precision, threads, performance_hint, cpu_pinning)
        supported = self._supported(self.device)
        self.config = {k: v for k, v in wanted.items() if supported is None or k in supported}
        try:
            self.compiled = self.core.compile_model(model, self.device, self.config)
        except Exception as exc:
            raise BundleError(f"openvino cannot compile {path.name} for {self.device}: {exc}") from exc
        self.request = self.compiled.create_infer_request()
        names = [p.get_any_name() for p in self.compiled.inputs]
        self.past_names = [n for n in names if n.startswith("past_")]
        self.stateful = not self.past_names
        if self.stateful and not self.request.query_state():
            raise BundleError(f"{path.name} has neither cache inputs nor state variables")
        self.present_names = ["present_" + n[len("past_"):] for n in self.past_names]
        self.genai_inputs = set(names) & set(GENAI_INPUTS)  # an IR LLMPipeline opens too (genai.py)
        self._logits = self.compiled.output("logits")
        if self.stateful and "beam_idx" in self.genai_inputs:  # constant for one sequence: bound once
            self.request.set_tensor("beam_idx", ov.Tensor(np.zeros((1,), dtype=np.int32)))
        # step inputs live in engine-owned buffers the request reads in place (no per-step arrays)
        self._one = np.zeros((1, 1), dtype=np.int64)
        self._one_t = ov.Tensor(self._one, shared_memory=True)
        self._ones = np.ones((1, self.max_context), dtype=np.int64)
        self._arange = np.arange(self.max_context, dtype=np.int64)
        s = self.spec
        self._empty = np.zeros((1, s.num_kv_heads, 0, s.head_dim), dtype=np.float32)  # (1, kv, 0, hd)
        self.cache: list[np.ndarray] = []
        self.reset()

    def _supported(self, device: str) -> set[str] | None:
        try:
            return set(self.core.get_property(device, "SUPPORTED_PROPERTIES"))
        except Exception:  # AUTO/HETERO or an absent device: let compile_model decide and report
            return None

    # -- the contract ---------------------------------------------------------------------
    def reset(self) -> None:
        if self.stateful:
            self.request.reset_state()
        else:
            self.cache = [self._empty] * len(self.past_names)
        self.position = 0

    def truncate(self, length: int) -> bool:
        """Cut every cache tensor (state variable or numpy IO) to its first ``length`` positions."""
        if not 0 <= length <= self.position:
            return False
        if length in (0, self.position):
            return super().truncate(length)
        if self.stateful:
            import openvino as ov

            try:
                for state in self.request.query_state():  # (1, kv, P, hd) -> (1, kv, length, hd)
                    state.state = ov.Tensor(np.ascontiguousarray(state.state.data[:, :, :length]))
            except Exception:  # a device whose state is not host-readable: the Generator resets instead
                return False
        else:
            self.cache = [np.ascontiguousarray(c[:, :, :length]) for c in self.cache]
        self.position = length
        return True

    def prefill(self, token_ids: Sequence[int]) -> np.ndarray:
        return self._run(self.check_tokens(token_ids))

    def decode(self, token_id: int) -> np.ndarray:
        return self._run(self.check_tokens([token_id]))

    def vendor_runtimes(self):
        """OpenVINO GenAI's LLMPipeline, when the export wrote its files (genai.py)."""
        if not ((self.bundle.manifest.get("interop") or {}).get("openvino-genai") or {}).get("written"):
            return {}
        from functools import partial

        from .genai import vendor_check

        return {"openvino-genai": partial(vendor_check, self.bundle)}

    def close(self) -> None:
        self.request = None
        self.compiled = None

    # -- one step -------------------------------------------------------------------------
    def _run(self, ids: np.ndarray) -> np.ndarray:
        if self.request is None:
            raise GenerationError("the engine is closed")
        if self.stateful:  # the cache never leaves the runtime
            return self._run_stateful(ids)
        feed = {"input_ids": ids.reshape(1, -1)}  # (1, S) int64
        if self.genai_inputs:
            feed.update(extra_inputs(self.genai_inputs, self.position, ids.size))
        # stateless: (1, kv, P, hd) in, (1, kv, P+S, hd) out, through numpy every step
        feed.update(zip(self.past_names, self.cache))
        out = self.request.infer(feed)
        self.cache = [out[n] for n in self.present_names]
        logits = out["logits"]
        self.position += ids.size
        return np.asarray(logits, dtype=np.float32).reshape(-1, logits.shape[-1])[-1]  # (1, [1,] V) -> (V,)

    def _run_stateful(self, ids: np.ndarray) -> np.ndarray:
        """Tensors bound on the request (no per-step dict); only the last logits row is copied out."""
        import openvino as ov

        req, n, p = self.request, ids.size, self.position
        if n == 1:  # decode: the preallocated (1, 1) buffer the request already holds
            self._one[0, 0] = ids[0]
            req.set_tensor("input_ids", self._one_t)
        else:
            req.set_tensor("input_ids", ov.Tensor(ids.reshape(1, -1)))  # (1, S) int64, copied
        if "attention_mask" in self.genai_inputs:  # unused by the graph, but GenAI's IR declares it
            req.set_tensor("attention_mask", ov.Tensor(self._ones[:, :p + n], shared_memory=True))  # (1, P+S)
        if "position_ids" in self.genai_inputs:
            req.set_tensor("position_ids", ov.Tensor(self._arange[None, p:p + n], shared_memory=True))  # (1, S)
        req.start_async()  # + wait(): ~2% less CPU per decode token than infer() here, same result
        req.wait()
        logits = req.get_tensor(self._logits).data  # the request's own buffer: (1, [1,] V)
        self.position += n
        return np.array(logits.reshape(-1, logits.shape[-1])[-1], dtype=np.float32)  # (V,), a copy the caller keeps


def _config(inference_precision, kv_cache_precision, threads, performance_hint, cpu_pinning=None) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    if performance_hint:
        cfg["PERFORMANCE_HINT"] = str(performance_hint).upper()
    if inference_precision and inference_precision != "default":
        cfg["INFERENCE_PRECISION_HINT"] = str(inference_precision)
        kv_cache_precision = kv_cache_precision or (inference_precision if inference_precision == "f32" else None)
    if kv_cache_precision and kv_cache_precision != "default":
        cfg["KV_CACHE_PRECISION"] = str(kv_cache_precision)
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = int(threads)
    if cpu_pinning is not None:
        cfg["ENABLE_CPU_PINNING"] = bool(cpu_pinning)
    return cfg
