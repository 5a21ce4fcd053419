"""The decoder re-authored for coremltools: fixed-size KV cache as in-place-written buffers.

coremltools 9 cannot convert the stock transformers Llama (``aten::diff``, ``aten::new_ones``,
an ``int`` op from data-dependent Python ints) and Core ML states need buffers that the graph
writes in place. This module holds the *same* weights as the source (Hugging Face names, loaded
from ``source.module.state_dict()``) in the form Apple's on-device Llama guidance uses::

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
"""

from __future__ import annotations

import torch
from torch import nn

from edgeslm.arch import llama as shared  # same projections, MLP and rotation; attention's cache and norms differ
from edgeslm.spec import ModelSpec


class SafeRMSNorm(nn.Module):
    """RMSNorm that cannot overflow in fp16: x / rms(x) == y / rms(y) with y = x / max|x|."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.abs().amax(-1, keepdim=True).clamp(min=1e-4)  # (1, S, 1)
        y = x / m
        var = y.pow(2).mean(-1, keepdim=True) + self.eps / (m * m)
        return self.weight * (y * torch.rsqrt(var))


class Attention(shared.Attention):
    """The shared projections (q/k/v/o, same weight names); forward writes a fixed-size cache."""

    def forward(self, x, cos, sin, mask, key_cache, value_cache, layer: int, past, end):
        s = x.shape[1]
        q = self.q_proj(x).view(1, s, self.h, self.hd).transpose(1, 2)  # (1, h, S, hd)
        k = self.k_proj(x).view(1, s, self.kv, self.hd).transpose(1, 2)  # (1, kv, S, hd)
        v = self.v_proj(x).view(1, s, self.kv, self.hd).transpose(1, 2)
        q = q * cos + shared.rotate_half(q) * sin
        k = k * cos + shared.rotate_half(k) * sin
        key_cache[layer, :, :, past:end, :] = k  # in place: becomes a Core ML state write
        value_cache[layer, :, :, past:end, :] = v
        keys = key_cache[layer, :, :, :end, :]  # (1, kv, E, hd)
        values = value_cache[layer, :, :, :end, :]
        group = self.h // self.kv
        t = keys.shape[2]
        keys = keys[:, :, None].expand(1, self.kv, group, t, self.hd).reshape(1, self.h, t, self.hd)  # (1, h, E, hd)
        values = values[:, :, None].expand(1, self.kv, group, t, self.hd).reshape(1, self.h, t, self.hd)
        scores = torch.matmul(q * (self.hd ** -0.5), keys.transpose(2, 3)) + mask  # (1, h, S, E)
        probs = torch.softmax(scores, dim=-1)
        out = torch.matmul(probs, values).transpose(1, 2).reshape(1, s, self.h * self.hd)  # (1, S, h*hd)
        return self.o_proj(out)


class DecoderLayer(nn.Module):
    def __init__(self, spec: ModelSpec, bias: bool):
        super().__init__()
        self.self_attn = Attention(spec, bias)
        self.mlp = shared.MLP(spec)
        self.input_layernorm = SafeRMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.post_attention_layernorm = SafeRMSNorm(spec.hidden_size, spec.rms_norm_eps)


class Backbone(nn.Module):
    def __init__(self, spec: ModelSpec, bias: bool):
        super().__init__()
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(spec, bias) for _ in range(spec.num_layers))
        self.norm = SafeRMSNorm(spec.hidden_size, spec.rms_norm_eps)


class CoreMLLlama(nn.Module):
    """Stateful decoder for ``ct.convert``; build it with :func:`from_source`."""

    def __init__(self, spec: ModelSpec, context_length: int, bias: bool = False):
        super().__init__()
        self.spec, self.context_length = spec, context_length
        self.model = Backbone(spec, bias)
        self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        if spec.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        cache = (spec.num_layers, 1, spec.num_kv_heads, context_length, spec.head_dim)  # (L, 1, kv, C, hd)
        self.register_buffer("key_cache", torch.zeros(cache))
        self.register_buffer("value_cache", torch.zeros(cache))
        inv_freq = 1.0 / (spec.rope_theta ** (torch.arange(0, spec.head_dim, 2).float() / spec.head_dim))
        freqs = torch.arange(context_length).float()[:, None] * inv_freq[None, :]  # (C, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (C, hd)
        self.register_buffer("rope_cos", emb.cos(), persistent=False)
        self.register_buffer("rope_sin", emb.sin(), persistent=False)

    def forward(self, input_ids: torch.Tensor, causal_mask: torch.Tensor) -> torch.Tensor:
        end = causal_mask.shape[-1]  # E = P + S (a shape op in the trace)
        past = end - input_ids.shape[-1]  # P
        cos = self.rope_cos[past:end][None, None]  # (1, 1, S, hd)
        sin = self.rope_sin[past:end][None, None]
        x = self.model.embed_tokens(input_ids)  # (1, S, hidden)
        for i, layer in enumerate(self.model.layers):
            a = layer.self_attn(layer.input_layernorm(x), cos, sin, causal_mask, self.key_cache, self.value_cache,
                                i, past, end)
            x = x + a
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        x = self.model.norm(x[:, -1, :])  # (1, hidden): only the last position's logits
        return self.lm_head(x)  # (1, V)


def causal_mask(past: int, new: int, dtype=torch.float32) -> torch.Tensor:
    """(1, 1, new, past + new): query i (at position past + i) sees keys 0..past + i."""
    q = torch.arange(past, past + new)[:, None]
    k = torch.arange(past + new)[None, :]
    return torch.where(k <= q, 0.0, float("-inf")).to(dtype)[None, None]


def from_source(source, context_length: int) -> CoreMLLlama:
    """A :class:`CoreMLLlama` holding ``source.module``'s weights (float32, eval mode)."""
    from edgeslm.arch import check_supported
    from edgeslm.errors import ModelLoadError

    spec = source.spec
    arch = check_supported(spec.architecture)
    model = CoreMLLlama(spec, context_length, bias=arch["attention_bias"])
    sd = {k: v.detach().to(torch.float32) for k, v in source.module.state_dict().items()
          if not k.endswith("rotary_emb.inv_freq")}
    if spec.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if m not in ("key_cache", "value_cache")
               and not (spec.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise ModelLoadError(f"weights do not match the {spec.architecture} layout: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    return model.eval()


def trace(model: CoreMLLlama) -> torch.jit.ScriptModule:
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
