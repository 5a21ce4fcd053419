"""The shared decoder with a fixed-size KV cache: the shape LiteRT signatures need.

LiteRT (TFLite) graphs have static shapes, so the cache is a fixed (1, kv, C, hd) buffer per
layer that goes in and comes back out of every call (the engine hands it back next step)::

    tokens         int32   (1, T)            T = the signature's length (prefill T, decode 1)
    input_pos      int32   (T,)              absolute positions of those tokens
    kv_cache_k_{i} float32 (1, kv, C, hd)    i = 0..layers-1, also kv_cache_v_{i}; C = context length
 -> kv_cache_k_{i} float32 (1, kv, C, hd)    the same buffers with rows input_pos overwritten
    logits         float32 (1, 1, V)         decode only: after the (single) token

Rows are written with a one-hot matmul (no scatter op) to slots ``input_pos[0] + t`` (callers
pass consecutive positions; LiteRT-LM pads with 0s after them), and attention sees key slot ``c`` from
query position ``p`` only when ``c <= p`` (and ``p - c`` is inside a sliding layer's window):
slots past the current position may hold garbage (prefill padding) and are overwritten before
any query can see them.

The decoder is :class:`edgeslm.arch.decoder.Decoder` (every family); this module contributes
only :class:`StaticCache`, its cache strategy.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeslm.arch.decoder import CacheStrategy


class StaticCache(CacheStrategy):
    """K/V rows written into fixed slots by position; queries of a group share one matmul."""

    attend_style = "grouped"

    def __init__(self, input_pos: torch.Tensor, kv: list[torch.Tensor]):
        self.pos = input_pos.to(torch.int64)  # (T,)
        self.kv = kv
        self.out: list[torch.Tensor] = []
        self._masks: dict[int | None, torch.Tensor] = {}

    def positions(self, decoder, input_ids):
        cache_len = self.kv[0].shape[2]
        slots = torch.arange(cache_len, dtype=torch.int64)  # (C,)
        self.slots = slots
        # Token t is written to slot input_pos[0] + t (a contiguous block, as litert-torch's own
        # caches do): LiteRT-LM pads a short prefill with input_pos 0, and those pad rows must
        # land past the real ones (masked, overwritten later), never on slot 0.
        rows = self.pos[:1] + torch.arange(self.pos.shape[0], dtype=torch.int64)  # (T,)
        self.write = (slots[:, None] == rows[None, :]).float()  # (C, T) one-hot rows to overwrite
        self.keep = 1.0 - self.write.sum(dim=1)[None, None, :, None]  # (1, 1, C, 1)
        return self.pos

    def mask(self, window: int | None) -> torch.Tensor:
        if window not in self._masks:
            allowed = self.slots[None, :] <= self.pos[:, None]  # (T, C)
            if window is not None:
                allowed = allowed & (self.slots[None, :] > self.pos[:, None] - window)
            self._masks[window] = torch.where(allowed, 0.0, -1e30)[None, None]  # (1, 1, T, C)
        return self._masks[window]

    def update(self, layer, block, k, v):
        ck = self.kv[2 * layer] * self.keep + torch.matmul(self.write, k)  # (1, kv, C, hd)
        cv = self.kv[2 * layer + 1] * self.keep + torch.matmul(self.write, v)
        self.out += [ck, cv]
        return ck, cv, self.mask(block.attention.sliding_window)

    def outputs(self):
        return self.out


class StaticCacheModel(nn.Module):
    """``forward(tokens, input_pos, kv, with_logits)``; wrap with the signature modules."""

    def __init__(self, decoder, cache_len: int):
        super().__init__()
        self.inner = decoder  # edgeslm.arch.decoder.Decoder
        self.layers = decoder.config.num_layers
        self.cache_len = int(cache_len)

    def empty_cache(self) -> list[torch.Tensor]:
        out = []
        for b in self.inner.config.blocks:
            shape = (1, b.attention.num_kv_heads, self.cache_len, b.attention.head_dim)  # (1, kv, C, hd)
            out += [torch.zeros(shape), torch.zeros(shape)]
        return out

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, kv: list[torch.Tensor], with_logits: bool):
        cache = StaticCache(input_pos, kv)
        logits = self.inner.run(tokens.to(torch.int64), cache, with_logits=with_logits)
        return cache.outputs() if logits is None else [logits, *cache.outputs()]


class _Signature(nn.Module):
    """One LiteRT signature over the shared core: ``(tokens, input_pos, kv_cache_k_0, ...)``
    -> ``{[logits (1, 1, V),] kv_cache_k_0, ...}`` (LiteRT-LM wants logits as (batch, seq, vocab))."""

    with_logits = False

    def __init__(self, core: StaticCacheModel):
        super().__init__()
        self.core = core

    def forward(self, tokens, input_pos, **kv):
        names = signature_cache_names(self.core.layers)
        out = list(self.core(tokens, input_pos, [kv[n] for n in names], with_logits=self.with_logits))
        logits = {"logits": out.pop(0)[:, None, :]} if self.with_logits else {}
        return {**logits, **dict(zip(names, out))}


class PrefillSignature(_Signature):
    """``prefill(tokens, input_pos, kv_cache_k_0, kv_cache_v_0, ...) -> {kv_cache_k_0: ..., ...}`` (no logits)."""


class DecodeSignature(_Signature):
    """``decode(tokens, input_pos, kv...) -> {logits (1, 1, V), kv_cache_k_0, ...}`` for one token."""

    with_logits = True


def signature_cache_names(layers: int) -> list[str]:
    """``[kv_cache_k_0, kv_cache_v_0, kv_cache_k_1, ...]``: the LiteRT signatures' cache arguments,
    in the order they take and return them. These are LiteRT-LM's names (its executor binds
    ``kv_cache_k_%d``), so the same .tflite runs in LiteRT-LM too (litertlm_file.py). The concat
    graphs' IO names are ``edgeslm.arch.concat.cache_names``."""
    return [f"kv_cache_{kind}_{i}" for i in range(layers) for kind in ("k", "v")]
