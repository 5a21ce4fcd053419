"""The re-authored decoder with a fixed-size KV cache, the shape LiteRT signatures need.

LiteRT (TFLite) graphs have static shapes, so the cache is a fixed (1, kv, C, hd) buffer per
layer that goes in and comes back out of every call (the engine hands it back next step)::

    tokens         int32   (1, T)            T = the signature's length (prefill T, decode 1)
    input_pos      int32   (T,)              absolute positions of those tokens
    kv_k_{i}       float32 (1, kv, C, hd)    i = 0..layers-1, also kv_v_{i}; C = context length
 -> kv_k_{i}       float32 (1, kv, C, hd)    the same buffers with rows input_pos overwritten
    logits         float32 (1, V)            decode only: after the (single) token

Rows are written with a one-hot matmul (no scatter op), and attention sees key slot ``c`` from
query position ``p`` only when ``c <= p``: slots past the current position may hold garbage
(prefill padding) and are overwritten before any query can see them.

The weights are the submodules of :class:`edgeslm.arch.llama.ExportLlama` (Hugging Face names,
low-rank layers included), so nothing is copied or renamed.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeslm.arch.llama import rotate_half


class StaticCacheLlama(nn.Module):
    """``forward(tokens, input_pos, *kv, with_logits)``; wrap with :func:`signature_module`."""

    def __init__(self, model, cache_len: int):
        super().__init__()
        self.inner = model  # ExportLlama
        s = model.spec
        self.h, self.kv, self.hd, self.layers = s.num_heads, s.num_kv_heads, s.head_dim, s.num_layers
        self.cache_len = int(cache_len)

    def empty_cache(self) -> list[torch.Tensor]:
        shape = (1, self.kv, self.cache_len, self.hd)  # (1, kv, C, hd)
        return [torch.zeros(shape) for _ in range(2 * self.layers)]

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, kv: list[torch.Tensor], with_logits: bool):
        m = self.inner
        t = tokens.shape[1]
        pos = input_pos.to(torch.int64)  # (T,)
        freqs = pos[:, None].float() * m.inv_freq[None, :]  # (T, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, hd)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]  # (1, 1, T, hd)
        slots = torch.arange(self.cache_len, dtype=torch.int64)  # (C,)
        write = (slots[:, None] == pos[None, :]).float()  # (C, T) one-hot rows to overwrite
        keep = 1.0 - write.sum(dim=1)[None, None, :, None]  # (1, 1, C, 1)
        mask = torch.where(slots[None, :] <= pos[:, None], 0.0, -1e30)[None, None]  # (1, 1, T, C)
        x = m.model.embed_tokens(tokens.to(torch.int64))  # (1, T, hidden)
        out_kv = []
        group = self.h // self.kv
        for i, layer in enumerate(m.model.layers):
            a = layer.self_attn
            hx = layer.input_layernorm(x)
            q = a.q_proj(hx).view(1, t, self.h, self.hd).transpose(1, 2)  # (1, h, T, hd)
            k = a.k_proj(hx).view(1, t, self.kv, self.hd).transpose(1, 2)  # (1, kv, T, hd)
            v = a.v_proj(hx).view(1, t, self.kv, self.hd).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            ck = kv[2 * i] * keep + torch.matmul(write, k)  # (1, kv, C, hd)
            cv = kv[2 * i + 1] * keep + torch.matmul(write, v)
            out_kv += [ck, cv]
            qg = q.reshape(1, self.kv, group * t, self.hd)  # (1, kv, group*T, hd): heads of a group stacked
            scores = torch.matmul(qg, ck.transpose(2, 3)) * (self.hd ** -0.5)  # (1, kv, group*T, C)
            scores = scores.view(1, self.h, t, self.cache_len) + mask  # (1, h, T, C)
            probs = torch.softmax(scores, dim=-1).view(1, self.kv, group * t, self.cache_len)
            o = torch.matmul(probs, cv).view(1, self.h, t, self.hd)  # (1, h, T, hd)
            x = x + a.o_proj(o.transpose(1, 2).reshape(1, t, self.h * self.hd))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        if not with_logits:
            return out_kv
        logits = m.lm_head(m.model.norm(x[:, -1, :]))  # (1, V)
        return [logits, *out_kv]


class PrefillSignature(nn.Module):
    """``prefill(tokens, input_pos, kv_k_0, kv_v_0, ...) -> {kv_k_0: ..., ...}`` (no logits)."""

    def __init__(self, core: StaticCacheLlama):
        super().__init__()
        self.core = core

    def forward(self, tokens, input_pos, **kv):
        out = self.core(tokens, input_pos, [kv[n] for n in cache_names(self.core.layers)], with_logits=False)
        return {name: t for name, t in zip(cache_names(self.core.layers), out)}


class DecodeSignature(nn.Module):
    """``decode(tokens, input_pos, kv...) -> {logits, kv_k_0, ...}`` for one token."""

    def __init__(self, core: StaticCacheLlama):
        super().__init__()
        self.core = core

    def forward(self, tokens, input_pos, **kv):
        out = self.core(tokens, input_pos, [kv[n] for n in cache_names(self.core.layers)], with_logits=True)
        return {"logits": out[0], **{name: t for name, t in zip(cache_names(self.core.layers), out[1:])}}


def cache_names(layers: int) -> list[str]:
    """``[kv_k_0, kv_v_0, kv_k_1, ...]``: the order the signatures take and return the cache."""
    return [f"kv_{kind}_{i}" for i in range(layers) for kind in ("k", "v")]
