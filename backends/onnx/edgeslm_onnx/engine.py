"""ONNX Runtime engine: the KV cache lives in numpy arrays handed back to the session each step."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from edgeslm.errors import BundleError
from edgeslm.runtime.engine import Engine


class OnnxEngine(Engine):
    """Options: ``threads`` (intra-op threads, default: onnxruntime's choice),
    ``providers`` (default ``["CPUExecutionProvider"]``)."""

    name = "onnx"

    def __init__(self, bundle, threads: int | None = None, providers: Sequence[str] | None = None, **options):
        super().__init__(bundle, threads=threads, providers=providers, **options)
        import onnxruntime as ort

        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        model = bundle.file(bundle.manifest["artifacts"]["model"])
        try:
            self.session = ort.InferenceSession(str(model), so, providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as exc:
            raise BundleError(f"onnxruntime cannot load {model}: {exc}") from exc
        names = [i.name for i in self.session.get_inputs()]
        self.past_names = [n for n in names if n.startswith("past_")]
        self.present_names = ["present_" + n[len("past_"):] for n in self.past_names]
        self.output_names = ["logits", *self.present_names]
        s = self.spec
        self._empty = np.zeros((1, s.num_kv_heads, 0, s.head_dim), dtype=np.float32)
        self.reset()

    def reset(self) -> None:
        self.cache = [self._empty] * len(self.past_names)
        self.position = 0

    def _run(self, ids: np.ndarray) -> np.ndarray:
        feed = {"input_ids": ids.reshape(1, -1)}
        feed.update(zip(self.past_names, self.cache))
        out = self.session.run(self.output_names, feed)
        self.cache = out[1:]
        self.position += ids.size
        return out[0][0]

    def prefill(self, token_ids: Sequence[int]) -> np.ndarray:
        return self._run(self.check_tokens(token_ids))

    def decode(self, token_id: int) -> np.ndarray:
        return self._run(self.check_tokens([token_id]))

    def close(self) -> None:
        self.session = None
