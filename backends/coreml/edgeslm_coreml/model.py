"""The decoder re-authored for coremltools: fixed-size KV cache as in-place-written buffers.

coremltools 9 cannot convert the stock transformers Llama (``aten::diff``, ``aten::new_ones``,
an ``int`` op from data-dependent Python ints) and Core ML states need buffers that the graph
writes in place. This module holds the *same* weights as the source (Hugging Face names, loaded
from ``source.module.state_dict()``), with its cache in the form Apple's on-device Llama guidance uses::

    input_ids    int32 (1, S)             S = new tokens, 1..context
    causal_mask  float (1, 1, S, E)       E = P + S, P = tokens already in the cache;
                                          0 where a query may attend, -inf elsewhere
    key_cache    state (L, 1, kv, C, hd)  C = context length, fixed; written at [P:E]
    value_cache  state (L, 1, kv, C, hd)
 -> logits       float (1, V)             after the last new token

The only runtime sizes are S and E, read from the two inputs' shapes (traced as shape ops, no
Python ints); the cache write is a slice assignment ``cache[l, :, :, P:E] = k`` and attention
reads ``cache[l, :, :, :E]``. Rotary cos/sin come from tables sliced at ``[P:E]``.

fp16 safety (the package computes in fp16): RMSNorm divides by the row's max |x| before
squaring (exact in real arithmetic, no overflow past 65504), and q is scaled before q.k.

The decoder is :class:`edgeslm.arch.decoder.Decoder` (every family); this module contributes
only :class:`StateCache`, its cache strategy, and the module that owns the state buffers. A
sliding-window layer adds a band mask built from a position table sliced at ``[P:E]``.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeslm.arch.decoder import CacheStrategy


class StateCache(CacheStrategy):
    """Writes K/V into the owner's (L, 1, kv, C, hd) buffers at [P:E]; attention reads [:E]."""

    attend_style = "scaled_q"

    def __init__(self, owner: "CoreMLDecoder", causal_mask: torch.Tensor, past, end):
        self.owner, self.causal, self.past, self.end = owner, causal_mask, past, end
        self._masks: dict[int | None, torch.Tensor] = {None: causal_mask}

    def positions(self, decoder, input_ids):
        return self.owner.position_table[self.past:self.end]  # (S,), unused: rotary is sliced below

    def rotary(self, decoder, rope_index, positions):
        cos = getattr(self.owner, f"rope_cos_{rope_index}")[self.past:self.end][None, None]  # (1, 1, S, rd)
        sin = getattr(self.owner, f"rope_sin_{rope_index}")[self.past:self.end][None, None]
        return cos, sin

    def mask(self, window):
        if window not in self._masks:
            table = self.owner.position_table
            q, k = table[self.past:self.end], table[:self.end]  # (S,), (E,)
            band = torch.where(k[None, :] > q[:, None] - window, 0.0, float("-inf"))[None, None]  # (1, 1, S, E)
            band = band.to(self.causal.dtype)  # the mask input is fp16 in the package
            self._masks[window] = self.causal + band
        return self._masks[window]

    def update(self, layer, block, k, v):
        self.owner.key_cache[layer, :, :, self.past:self.end, :] = k  # in place: becomes a Core ML state write
        self.owner.value_cache[layer, :, :, self.past:self.end, :] = v
        keys = self.owner.key_cache[layer, :, :, :self.end, :]  # (1, kv, E, hd)
        values = self.owner.value_cache[layer, :, :, :self.end, :]
        return keys, values, self.mask(block.attention.sliding_window)


class CoreMLDecoder(nn.Module):
    """Stateful decoder for ``ct.convert``; build it with :func:`from_source`."""

    def __init__(self, decoder, context_length: int):
        super().__init__()
        cfg = decoder.config
        self.decoder = decoder.use_fp16_safe_norms()
        self.spec_config, self.context_length = cfg, context_length
        kv, hd = cfg.uniform("num_kv_heads"), cfg.uniform("head_dim")
        cache = (cfg.num_layers, 1, kv, context_length, hd)  # (L, 1, kv, C, hd)
        self.register_buffer("key_cache", torch.zeros(cache))
        self.register_buffer("value_cache", torch.zeros(cache))
        positions = torch.arange(context_length)
        self.register_buffer("position_table", positions.float(), persistent=False)
        for j in range(len(decoder.ropes)):
            cos, sin = decoder.rotary(j, positions)  # (1, 1, C, rd)
            self.register_buffer(f"rope_cos_{j}", cos[0, 0], persistent=False)
            self.register_buffer(f"rope_sin_{j}", sin[0, 0], persistent=False)

    def forward(self, input_ids: torch.Tensor, causal_mask: torch.Tensor) -> torch.Tensor:
        end = causal_mask.shape[-1]  # E = P + S (a shape op in the trace)
        past = end - input_ids.shape[-1]  # P
        return self.decoder.run(input_ids, StateCache(self, causal_mask, past, end))  # (1, V)


def causal_mask(past: int, new: int, dtype=torch.float32) -> torch.Tensor:
    """(1, 1, new, past + new): query i (at position past + i) sees keys 0..past + i."""
    q = torch.arange(past, past + new)[:, None]
    k = torch.arange(past + new)[None, :]
    return torch.where(k <= q, 0.0, float("-inf")).to(dtype)[None, None]


def from_source(source, context_length: int) -> CoreMLDecoder:
    """A :class:`CoreMLDecoder` holding ``source.module``'s weights (float32, eval mode)."""
    from edgeslm.errors import ExportError

    try:
        return CoreMLDecoder(source.export_module(context_length), context_length).eval()
    except ValueError as exc:  # per-layer KV shapes differ: one state tensor cannot hold them
        raise ExportError(f"Core ML export needs the same KV-cache shape in every layer: {exc}") from exc


def trace(model: CoreMLDecoder) -> torch.jit.ScriptModule:
    """torch.jit.trace with a 2-token query after 3 cached tokens, so no size is specialized."""
    ids = torch.zeros((1, 2), dtype=torch.int32)
    with torch.no_grad():
        traced = torch.jit.trace(model, (ids, causal_mask(3, 2)), check_trace=False)
    reset_cache(traced)
    return traced


def reset_cache(module) -> None:
    with torch.no_grad():
        for name, buf in module.named_buffers():
            if name in ("key_cache", "value_cache"):
                buf.zero_()
