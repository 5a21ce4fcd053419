"""ONNX Runtime engine.

Graphs from the graph writer (input ``seqlens_k``): the KV cache is one preallocated buffer
per layer and kind, ``(1, kv, L, hd)``, bound once as both ``past_*`` and ``present_*``
(GroupQueryAttention writes the new positions in place); ``seqlens_k`` and
``total_sequence_length`` are small numpy arrays bound once and updated in place; the logits
are written into a preallocated array. Per call only ``input_ids`` is rebound. Truncating the
cache (prefix reuse) is just a new position: later positions are overwritten.

Torch-exported graphs: the KV cache stays in onnxruntime's own buffers (OrtValues) between steps: each step binds the
previous step's ``present_*`` outputs as the next ``past_*`` inputs through IO binding, so no
cache tensor is converted to or from numpy in Python. Only the logits come back as numpy.

Execution providers: ``providers=["cuda", "cpu"]`` (or full names such as
``CUDAExecutionProvider``) in priority order. A provider this onnxruntime build does not have,
or one that fails to start, is an error naming the available ones -- never a silent fall back
to the CPU.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from edgeslm.errors import BundleError, EngineOptionError
from edgeslm.runtime.engine import Engine, EngineOption

SUFFIX = "ExecutionProvider"


def resolve_providers(requested: Sequence[str] | None) -> list[str]:
    """Short or full provider names -> onnxruntime's names, refusing what this build lacks.

    ``cuda`` -> ``CUDAExecutionProvider``, ``tensorrt`` -> ``TensorrtExecutionProvider``,
    ``cpu`` -> ``CPUExecutionProvider`` ... (any provider onnxruntime knows, case-insensitive).
    """
    import onnxruntime as ort

    if not requested:
        return ["CPUExecutionProvider"]
    names = {n.lower(): n for n in ort.get_all_providers()}
    names.update({n.lower()[:-len(SUFFIX)]: n for n in ort.get_all_providers() if n.endswith(SUFFIX)})
    available = ort.get_available_providers()
    out = []
    for item in requested:
        full = names.get(str(item).strip().lower())
        if full is None:
            raise EngineOptionError(f"unknown onnxruntime execution provider {item!r}; this onnxruntime has: "
                                    f"{_short(available)}")
        if full not in available:
            hint = " (CUDA/TensorRT need the onnxruntime-gpu package instead of onnxruntime)" \
                if full in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else ""
            raise EngineOptionError(f"this onnxruntime {ort.__version__} has no {full}{hint}; "
                                    f"available: {_short(available)}")
        if full not in out:
            out.append(full)
    return out


def _short(names: Sequence[str]) -> str:
    return ", ".join(f"{n[:-len(SUFFIX)].lower()} ({n})" if n.endswith(SUFFIX) else n for n in names)


class OnnxEngine(Engine):
    """Options: ``threads`` (intra-op threads, default: onnxruntime's choice),
    ``providers`` (default ``["CPUExecutionProvider"]``), ``io_binding`` (default True;
    False hands the cache through numpy each step, kept for comparison in benchmarks),
    ``spinning`` (default True, onnxruntime's own: worker threads busy-wait between ops; False
    makes them block, which is faster only on a CPU shared with other busy processes)."""

    name = "onnx"
    known_options = {
        "threads": EngineOption("int", "intra-op threads (default: onnxruntime's choice)"),
        "providers": EngineOption("list", "execution providers in priority order: cuda,cpu (default cpu)"),
        "io_binding": EngineOption("bool", "keep the KV cache in onnxruntime buffers (default true)"),
        "spinning": EngineOption("bool", "intra-op threads busy-wait between ops (default true; false on a CPU "
                                         "shared with other busy processes, where spinning steals their time)"),
    }

    def __init__(self, bundle, threads: int | None = None, providers: Sequence[str] | None = None,
                 io_binding: bool = True, spinning: bool = True, **options):
        super().__init__(bundle, threads=threads, providers=providers, io_binding=io_binding, spinning=spinning,
                         **options)
        import onnxruntime as ort

        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        # Measured (docs/performance.md): 2 threads on a quiet machine, spinning 117 vs 84 tok/s (a
        # decode step is hundreds of short ops, each a thread hand-off); on a machine loaded by
        # other processes spinning made a step ~3x slower. A device runs its model alone.
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        model = bundle.artifact("model")
        if bundle.manifest.get("artifacts", {}).get("custom_ops"):  # q4_1_offsets=fused: edgeslm's own kernels
            from .kernels import register

            register(so)
        wanted = resolve_providers(providers)
        try:
            self.session = ort.InferenceSession(str(model), so, providers=wanted)
        except Exception as exc:
            raise BundleError(f"onnxruntime cannot load {model}: {exc}") from exc
        missing = [p for p in wanted if p not in self.session.get_providers()]
        if missing:  # onnxruntime falls back to the CPU with only a warning: refuse instead
            raise EngineOptionError(f"onnxruntime could not start {', '.join(missing)} for {model.name} "
                                    f"(see its log above); running on {', '.join(self.session.get_providers())}")
        _check_io(self.session, self.spec, bundle.source)
        names = [i.name for i in self.session.get_inputs()]
        self.past_names = [n for n in names if n.startswith("past_")]
        self.present_names = ["present_" + n[len("past_"):] for n in self.past_names]
        self.output_names = ["logits", *self.present_names]
        self.io_binding = io_binding
        self.shared_buffer = "seqlens_k" in names
        if self.shared_buffer:
            self._bind_buffers(ort)
        else:
            s = self.spec
            empty = np.zeros((1, s.num_kv_heads, 0, s.head_dim), dtype=np.float32)
            self._empty = ort.OrtValue.ortvalue_from_numpy(empty) if io_binding else empty
        self.reset()

    def _bind_buffers(self, ort) -> None:
        """Shared-buffer graphs: allocate the KV buffers, lengths and logits once and bind them."""
        shapes = {i.name: i.shape for i in self.session.get_inputs()}
        self.buffer_length = int(shapes[self.past_names[0]][2])
        self._kv = [ort.OrtValue.ortvalue_from_numpy(np.zeros(shapes[n], np.float32)) for n in self.past_names]
        self._seqlens = np.zeros(1, np.int32)  # updated in place before each run
        self._total = np.zeros((), np.int32)
        self._logits = np.zeros((1, self.spec.vocab_size), np.float32)
        self._decode_ids = np.zeros((1, 1), np.int64)
        io = self.session.io_binding()
        for past, present, value in zip(self.past_names, self.present_names, self._kv):
            io.bind_ortvalue_input(past, value)
            io.bind_ortvalue_output(present, value)  # the same buffer: written in place
        io.bind_ortvalue_input("seqlens_k", ort.OrtValue.ortvalue_from_numpy(self._seqlens))
        io.bind_ortvalue_input("total_sequence_length", ort.OrtValue.ortvalue_from_numpy(self._total))
        io.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(self._logits))
        self._decode_value = ort.OrtValue.ortvalue_from_numpy(self._decode_ids)
        self._bound_decode = False
        self._io = io

    @property
    def max_context(self) -> int:
        limit = super().max_context
        return min(limit, self.buffer_length) if getattr(self, "shared_buffer", False) else limit

    def reset(self) -> None:
        if not self.shared_buffer:
            self.cache = [self._empty] * len(self.past_names)
        self.position = 0

    def truncate(self, length: int) -> bool:
        """Keep the first ``length`` positions of every cache tensor (shared buffer: free;
        otherwise one copy of each)."""
        if not 0 <= length <= self.position:
            return False
        if self.shared_buffer:
            self.position = length  # positions past it are overwritten by the next call
            return True
        if length in (0, self.position):
            return super().truncate(length)
        import onnxruntime as ort

        kept = []
        for value in self.cache:  # (1, kv, P, hd) -> (1, kv, length, hd)
            arr = value.numpy() if self.io_binding else value
            cut = np.ascontiguousarray(arr[:, :, :length])
            kept.append(ort.OrtValue.ortvalue_from_numpy(cut) if self.io_binding else cut)
        self.cache = kept
        self.position = length
        return True

    def _run_shared(self, ids: np.ndarray) -> np.ndarray:
        io = self._io
        if ids.size == 1:
            self._decode_ids[0, 0] = ids[0]
            if not self._bound_decode:
                io.bind_ortvalue_input("input_ids", self._decode_value)
                self._bound_decode = True
        else:
            io.bind_cpu_input("input_ids", np.ascontiguousarray(ids.reshape(1, -1)))
            self._bound_decode = False
        total = self.position + ids.size
        self._seqlens[0] = total - 1
        self._total[...] = total
        self.session.run_with_iobinding(io)
        self.position = total
        return self._logits[0].copy()  # the buffer is overwritten by the next call

    def _run(self, ids: np.ndarray) -> np.ndarray:
        if self.shared_buffer:
            return self._run_shared(ids)
        ids = np.ascontiguousarray(ids.reshape(1, -1))
        if self.io_binding:
            io = self.session.io_binding()
            io.bind_cpu_input("input_ids", ids)
            for name, value in zip(self.past_names, self.cache):
                io.bind_ortvalue_input(name, value)
            for name in self.output_names:
                io.bind_output(name, "cpu")
            self.session.run_with_iobinding(io)
            out = io.get_outputs()
            self.cache = list(out[1:])  # (1, kv, P+S, hd) each, reused as the next past_*
            logits = out[0].numpy()
        else:
            feed = {"input_ids": ids}
            feed.update(zip(self.past_names, self.cache))
            out = self.session.run(self.output_names, feed)
            self.cache = out[1:]
            logits = out[0]
        self.position += ids.size
        return logits[0]

    def prefill(self, token_ids: Sequence[int]) -> np.ndarray:
        return self._run(self.check_tokens(token_ids))

    def decode(self, token_id: int) -> np.ndarray:
        return self._run(self.check_tokens([token_id]))

    def vendor_runtimes(self):
        """onnxruntime-genai, when the export wrote its files (genai.py)."""
        if not ((self.bundle.manifest.get("interop") or {}).get("onnxruntime-genai") or {}).get("written"):
            return {}
        from functools import partial

        from .genai import vendor_check

        return {"onnxruntime-genai": partial(vendor_check, self.bundle)}

    def close(self) -> None:
        self.session = None
        self.cache = []
        self._io = self._kv = None


def _check_io(session, spec, where) -> None:
    """BundleError when the manifest's spec disagrees with the graph's fixed dimensions, so a
    mismatched bundle is refused at load instead of failing inside onnxruntime at the first step."""
    want = {"past_": (1, spec.num_kv_heads, None, spec.head_dim), "logits": (1, spec.vocab_size)}
    for io in [*session.get_inputs(), *session.get_outputs()]:
        expected = next((shape for prefix, shape in want.items() if io.name.startswith(prefix)), None)
        if expected is None:
            continue
        shape = list(io.shape)
        if len(shape) != len(expected) or any(isinstance(d, int) and e is not None and d != e
                                              for d, e in zip(shape, expected)):
            raise BundleError(f"{where}: the model's '{io.name}' has shape {shape}, but the manifest's spec "
                              f"implies {['?' if e is None else e for e in expected]}")
