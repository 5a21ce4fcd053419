"""An Engine over the Core ML-friendly torch module: how a Core ML export is verified on Linux.

coremltools cannot predict off Apple platforms, so the parity check of a Core ML export runs
the very ``torch.jit`` trace that ``ct.convert`` consumed (same graph, same weights, same
in-place cache writes and the same ``causal_mask`` input the device gets), fp32 on the CPU,
through the ordinary Engine contract. The exporter also runs it in fp16 with the weights read
back from the saved package, the closest Linux emulation of the package itself.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Sequence

import numpy as np

from edgeslm.runtime.engine import Engine


class TorchCoreMLEngine(Engine):
    """Runs a :class:`~edgeslm_coreml.model.CoreMLDecoder` (eager or traced) step by step."""

    name = "coreml-torch"

    def __init__(self, module, model_spec, context_length: int, dtype=None, label: str = "traced fp32"):
        import torch

        super().__init__(SimpleNamespace(spec=model_spec, manifest={"context_length": context_length}))
        self.module, self.label = module, label
        self.dtype = dtype or torch.float32
        self.reset()

    def reset(self) -> None:
        from .model import reset_cache

        reset_cache(self.module)
        self.position = 0

    def _run(self, ids: np.ndarray) -> np.ndarray:
        import torch

        from .model import causal_mask

        with torch.no_grad():
            logits = self.module(torch.from_numpy(ids.astype(np.int32)).reshape(1, -1),
                                 causal_mask(self.position, ids.size, self.dtype))  # (1, V)
        self.position += ids.size
        return logits[0].float().numpy()

    def prefill(self, token_ids: Sequence[int]) -> np.ndarray:
        return self._run(self.check_tokens(token_ids))

    def decode(self, token_id: int) -> np.ndarray:
        return self._run(self.check_tokens([token_id]))
