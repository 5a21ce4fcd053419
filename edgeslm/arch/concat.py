"""The concat KV cache (ONNX, OpenVINO): past K/V are inputs, past+new K/V are outputs.

Positions and the causal mask come from the past length P (a shape, not a value) and the new
length S, so an engine feeds only token ids and the cache. A sliding-window layer masks keys
older than its window; its cache keeps every position, so all layers share one past length.
"""

from __future__ import annotations

import torch

from .config import BlockConfig
from .decoder import CacheStrategy


class ConcatCache(CacheStrategy):
    def __init__(self, past: list[torch.Tensor]):
        self.past = past
        self.present: list[torch.Tensor] = []
        self._masks: dict[int | None, torch.Tensor] = {}

    def positions(self, decoder, input_ids):
        self.s = input_ids.shape[1]
        self.p = self.past[0].shape[2]
        self.pos = torch.arange(self.s, device=input_ids.device) + self.p  # (S,)
        return self.pos

    def mask(self, window: int | None) -> torch.Tensor:
        """(1, 1, S, P+S) additive: 0 where a query may attend, the float32 minimum elsewhere."""
        if window not in self._masks:
            key_pos = torch.arange(self.p + self.s, device=self.pos.device)  # (P+S,)
            allowed = key_pos[None, :] <= self.pos[:, None]  # (S, P+S)
            if window is not None:
                allowed = allowed & (key_pos[None, :] > self.pos[:, None] - window)
            self._masks[window] = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[None, None]
        return self._masks[window]

    def update(self, layer: int, block: BlockConfig, k, v):
        keys = torch.cat([self.past[2 * layer], k], dim=2)  # (1, kv, P+S, hd)
        values = torch.cat([self.past[2 * layer + 1], v], dim=2)
        self.present += [keys, values]
        return keys, values, self.mask(block.attention.sliding_window)

    def outputs(self):
        return self.present


def cache_names(num_layers: int, prefix: str) -> list[str]:
    """``[prefix_key_0, prefix_value_0, ...]`` in the order forward() takes and returns them."""
    return [f"{prefix}_{kind}_{i}" for i in range(num_layers) for kind in ("key", "value")]


def io_names(num_layers: int) -> tuple[list[str], list[str]]:
    """The graph's input and output names: ``input_ids, past_*`` -> ``logits, present_*``."""
    return ["input_ids", *cache_names(num_layers, "past")], ["logits", *cache_names(num_layers, "present")]


def example_inputs(module) -> tuple[torch.Tensor, ...]:
    """What an exporter traces ``module`` with: ids (1, 4) and a past of 3 positions per layer,
    (1, kv, 3, hd) each: sizes other than 0 and 1 so that neither dim specializes."""
    return (torch.zeros((1, 4), dtype=torch.int64), *module.empty_cache(past_len=3))
