"""A Llama-family decoder written for export: explicit KV cache in, updated KV cache out.

Signature of :class:`ExportLlama.forward` (batch is always 1 on a device)::

    input_ids           (1, S)              int64   the new tokens
    past_key_{i}        (1, kv, P, hd)      float   one per layer, P = tokens already seen
    past_value_{i}      (1, kv, P, hd)
 -> logits              (1, V)              float   next-token logits after the last new token
    present_key_{i}     (1, kv, P+S, hd)
    present_value_{i}   (1, kv, P+S, hd)

Positions and the causal mask are derived from P and S inside the graph, so an engine feeds only
token ids and the cache. Submodule names equal Hugging Face's ``LlamaForCausalLM`` so its
state dict loads unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..spec import ModelSpec
from . import check_supported


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.fused = False  # see ExportLlama.use_fused_ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return nn.functional.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.eps))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LowRankLinear(nn.Module):
    """A factorized linear layer ``W ~= up.weight @ down.weight`` (low-rank compression).

    ``down``: (rank, in) and ``up``: (out, rank); rank * (in + out) weights instead of in * out.
    The same class is placed inside the Hugging Face module and inside :class:`ExportLlama`,
    so both hold the weights under identical names (``<layer>.down.weight``, ``<layer>.up.weight``).
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))  # (..., in) -> (..., rank) -> (..., out)


def apply_low_rank(module: nn.Module, ranks: dict[str, int]) -> nn.Module:
    """Replace each ``nn.Linear`` named in ``ranks`` (e.g. ``model.layers.0.mlp.up_proj``) by an
    untrained :class:`LowRankLinear` of that rank; weights are loaded afterwards."""
    for name, rank in ranks.items():
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name)
        dense = getattr(parent, attr)
        if isinstance(dense, LowRankLinear):
            continue
        setattr(parent, attr, LowRankLinear(dense.in_features, dense.out_features, int(rank),
                                            bias=dense.bias is not None))
    return module


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec, bias: bool):
        super().__init__()
        self.h, self.kv, self.hd = spec.num_heads, spec.num_kv_heads, spec.head_dim
        hs = spec.hidden_size
        self.q_proj = nn.Linear(hs, self.h * self.hd, bias=bias)
        self.k_proj = nn.Linear(hs, self.kv * self.hd, bias=bias)
        self.v_proj = nn.Linear(hs, self.kv * self.hd, bias=bias)
        self.o_proj = nn.Linear(self.h * self.hd, hs, bias=False)
        self.fused = False  # see ExportLlama.use_fused_ops

    def forward(self, x, cos, sin, mask, past_k, past_v):
        s = x.shape[1]
        q = self.q_proj(x).view(1, s, self.h, self.hd).transpose(1, 2)  # (1, h, S, hd)
        k = self.k_proj(x).view(1, s, self.kv, self.hd).transpose(1, 2)  # (1, kv, S, hd)
        v = self.v_proj(x).view(1, s, self.kv, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = torch.cat([past_k, k], dim=2)  # (1, kv, P+S, hd)
        v = torch.cat([past_v, v], dim=2)
        if self.fused:
            # enable_gqa only with real groups: torch.onnx refuses it when h == kv (plain MHA,
            # e.g. after structured pruning leaves one query head per KV head)
            out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.hd ** -0.5,
                                                             enable_gqa=self.h > self.kv)  # (1, h, S, hd)
            return self.o_proj(out.transpose(1, 2).reshape(1, s, self.h * self.hd)), k, v
        group = self.h // self.kv
        kk = k.repeat_interleave(group, dim=1)  # (1, h, P+S, hd)
        vv = v.repeat_interleave(group, dim=1)
        scores = torch.matmul(q, kk.transpose(2, 3)) * (self.hd ** -0.5) + mask  # (1, h, S, P+S)
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        out = torch.matmul(probs, vv).transpose(1, 2).reshape(1, s, self.h * self.hd)
        return self.o_proj(out), k, v


class MLP(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.gate_proj = nn.Linear(spec.hidden_size, spec.intermediate_size, bias=False)
        self.up_proj = nn.Linear(spec.hidden_size, spec.intermediate_size, bias=False)
        self.down_proj = nn.Linear(spec.intermediate_size, spec.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, spec: ModelSpec, bias: bool):
        super().__init__()
        self.self_attn = Attention(spec, bias)
        self.mlp = MLP(spec)
        self.input_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)

    def forward(self, x, cos, sin, mask, past_k, past_v):
        a, k, v = self.self_attn(self.input_layernorm(x), cos, sin, mask, past_k, past_v)
        x = x + a
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, k, v


class Backbone(nn.Module):
    def __init__(self, spec: ModelSpec, bias: bool):
        super().__init__()
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(spec, bias) for _ in range(spec.num_layers))
        self.norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)


class ExportLlama(nn.Module):
    """The re-authored decoder. Build it with :func:`from_state_dict`."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        arch = check_supported(spec.architecture)
        self.spec = spec
        self.model = Backbone(spec, arch["attention_bias"])
        self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        if spec.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        inv_freq = 1.0 / (spec.rope_theta ** (torch.arange(0, spec.head_dim, 2).float() / spec.head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        # spec.extra["low_rank"]: {"model.layers.0.mlp.up_proj": rank, ...} from edgeslm.compress
        apply_low_rank(self, spec.extra.get("low_rank") or {})

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor):
        s = input_ids.shape[1]
        p = past[0].shape[2]
        positions = torch.arange(s, device=input_ids.device) + p  # (S,)
        freqs = positions[:, None].float() * self.inv_freq[None, :]  # (S, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (S, hd)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]  # (1, 1, S, hd)
        key_pos = torch.arange(p + s, device=input_ids.device)  # (P+S,)
        allowed = key_pos[None, :] <= positions[:, None]  # (S, P+S)
        mask = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[None, None]  # (1,1,S,P+S)
        x = self.model.embed_tokens(input_ids)  # (1, S, hidden)
        present = []
        for i, layer in enumerate(self.model.layers):
            x, k, v = layer(x, cos, sin, mask, past[2 * i], past[2 * i + 1])
            present += [k, v]
        x = self.model.norm(x[:, -1, :])  # (1, hidden): only the last position's logits
        return (self.lm_head(x), *present)

    def use_fused_ops(self, fused: bool = True) -> "ExportLlama":
        """Compute attention with ``scaled_dot_product_attention`` (grouped-query, no repeated
        K/V) and RMSNorm with ``rms_norm``. The math is the same; converters that know these ops
        (torch.onnx at opset 23: ONNX ``Attention`` and ``RMSNormalization``) then emit one fused
        op each instead of a dozen small ones per layer."""
        for m in self.modules():
            if isinstance(m, (RMSNorm, Attention)):
                m.fused = fused
        return self

    def empty_cache(self, past_len: int = 0, dtype=torch.float32) -> list[torch.Tensor]:
        shape = (1, self.spec.num_kv_heads, past_len, self.spec.head_dim)
        return [torch.zeros(shape, dtype=dtype) for _ in range(2 * self.spec.num_layers)]


def cache_names(spec: ModelSpec, prefix: str) -> list[str]:
    """``[prefix_key_0, prefix_value_0, ...]`` in the order forward() takes and returns them."""
    return [f"{prefix}_{kind}_{i}" for i in range(spec.num_layers) for kind in ("key", "value")]


def from_state_dict(spec: ModelSpec, state_dict: dict[str, Any]) -> ExportLlama:
    """Build an :class:`ExportLlama` holding the given Hugging Face-named weights (float32)."""
    model = ExportLlama(spec)
    sd = {k: v.detach().to(torch.float32) for k, v in state_dict.items() if not k.endswith("rotary_emb.inv_freq")}
    if spec.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not (spec.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        from ..errors import ModelLoadError

        raise ModelLoadError(f"weights do not match the {spec.architecture} layout: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()
