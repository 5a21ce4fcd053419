"""One torch decoder for every family and every backend, read from a :class:`DecoderConfig`.

Converters (torch.onnx dynamo, OpenVINO, coremltools, litert-torch) each choke on different
corners of the stock Hugging Face modules (dynamic caches, data-dependent Python ints,
``aten::diff`` in mask building), so the decoder is written once here as a plain torch module
whose weights carry Hugging Face's names (a transformers state dict loads unchanged) and whose
KV cache is held by a pluggable :class:`CacheStrategy`:

- :class:`~edgeslm.arch.concat.ConcatCache` (the default; ONNX, OpenVINO): past K/V in, past+new out;
- the LiteRT backend's static slots, the Core ML backend's in-place state buffers.

A backend contributes only its strategy and numerics options (:meth:`Decoder.use_fused_ops`,
:meth:`Decoder.use_fp16_safe_norms`), never a decoder of its own. The default forward is::

    input_ids           (1, S)              int64   the new tokens
    past_key_{i}        (1, kv, P, hd)      float   one per layer, P = tokens already seen
    past_value_{i}      (1, kv, P, hd)
 -> logits              (1, V)              float   next-token logits after the last new token
    present_key_{i}     (1, kv, P+S, hd)
    present_value_{i}   (1, kv, P+S, hd)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .config import AttentionConfig, BlockConfig, DecoderConfig, MLPConfig, NormConfig
from .lowrank import apply_low_rank
from .rope import inv_freq as rope_inv_freq


class RMSNorm(nn.Module):
    """``w * x / rms(x)``, or ``(1 + w) * ...`` with offset 1 (Gemma). Modes: ``"plain"``,
    ``"fused"`` (``rms_norm``, one op for converters that know it) and ``"fp16"`` (divides by
    max|x| first: no overflow past 65504 when a runtime computes in fp16)."""

    def __init__(self, dim: int, cfg: NormConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim) if cfg.offset else torch.ones(dim))
        self.eps, self.offset = cfg.eps, cfg.offset
        self.mode = "plain"

    def scale(self) -> torch.Tensor:
        return self.weight + self.offset if self.offset else self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "fused":
            return nn.functional.rms_norm(x, (x.shape[-1],), self.scale(), self.eps)
        if self.mode == "fp16":
            m = x.abs().amax(-1, keepdim=True).clamp(min=1e-4)  # x / rms(x) == y / rms(y), y = x / max|x|
            y = x / m
            var = y.pow(2).mean(-1, keepdim=True) + self.eps / (m * m)
            return self.scale() * (y * torch.rsqrt(var))
        var = x.pow(2).mean(-1, keepdim=True)
        return self.scale() * (x * torch.rsqrt(var + self.eps))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int | None = None) -> torch.Tensor:
    """Rotate each head (or only its first ``rotary_dim`` dims: partial rotary)."""
    if rotary_dim is None:
        return x * cos + rotate_half(x) * sin
    rd = rotary_dim
    rot, keep = x[..., :rd], x[..., rd:]
    return torch.cat((rot * cos + rotate_half(rot) * sin, keep), dim=-1)


ACTIVATIONS = {
    "silu": nn.functional.silu,
    "gelu_tanh": lambda x: nn.functional.gelu(x, approximate="tanh"),
    "gelu": nn.functional.gelu,
}


class Attention(nn.Module):
    def __init__(self, cfg: AttentionConfig, hidden: int, norm: NormConfig):
        super().__init__()
        self.cfg = cfg
        self.h, self.kv, self.hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q, kv = self.h * self.hd, self.kv * self.hd
        if cfg.fused_qkv:
            self.qkv_proj = nn.Linear(hidden, q + 2 * kv, bias=cfg.qkv_bias)
        else:
            self.q_proj = nn.Linear(hidden, q, bias=cfg.qkv_bias)
            self.k_proj = nn.Linear(hidden, kv, bias=cfg.qkv_bias)
            self.v_proj = nn.Linear(hidden, kv, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(q, hidden, bias=cfg.out_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.hd, norm)
            self.k_norm = RMSNorm(self.hd, norm)
        self.scale = cfg.scale if cfg.scale is not None else self.hd ** -0.5
        self.fused = False  # see Decoder.use_fused_ops

    def project(self, x: torch.Tensor):
        """(1, S, hidden) -> q (1, h, S, hd), k and v (1, kv, S, hd), before rotation."""
        s = x.shape[1]
        if self.cfg.fused_qkv:
            qkv = self.qkv_proj(x)
            q_end, k_end = self.h * self.hd, (self.h + self.kv) * self.hd
            q, k, v = qkv[..., :q_end], qkv[..., q_end:k_end], qkv[..., k_end:]
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(1, s, self.h, self.hd)
        k = k.view(1, s, self.kv, self.hd)
        if self.cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        return q.transpose(1, 2), k.transpose(1, 2), v.view(1, s, self.kv, self.hd).transpose(1, 2)

    def attend(self, q, keys, values, mask, style: str = "repeat") -> torch.Tensor:
        """softmax(q.k * scale [soft-capped] + mask).v -> (1, S, h*hd). ``keys``/``values``
        (1, kv, T, hd), ``mask`` additive (1, 1, S, T). ``style``: ``"repeat"`` (K/V repeated
        per query head), ``"grouped"`` (a group's query heads stacked into one matmul, no
        repeat), ``"scaled_q"`` (q scaled before the product: fp16 runtimes)."""
        s, t, group = q.shape[2], keys.shape[2], self.h // self.kv
        cap = self.cfg.logit_softcap
        if self.fused and cap is None:
            # enable_gqa only with real groups: torch.onnx refuses it when h == kv
            out = nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scale,
                                                             enable_gqa=self.h > self.kv)  # (1, h, S, hd)
            return out.transpose(1, 2).reshape(1, s, self.h * self.hd)
        if style == "grouped":
            qg = q.reshape(1, self.kv, group * s, self.hd)  # (1, kv, group*S, hd)
            scores = (torch.matmul(qg, keys.transpose(2, 3)) * self.scale).view(1, self.h, s, t)  # (1, h, S, T)
        else:
            if group > 1:
                keys = keys[:, :, None].expand(1, self.kv, group, t, self.hd).reshape(1, self.h, t, self.hd)
                values = values[:, :, None].expand(1, self.kv, group, t, self.hd).reshape(1, self.h, t, self.hd)
            if style == "scaled_q":
                scores = torch.matmul(q * self.scale, keys.transpose(2, 3))
            else:
                scores = torch.matmul(q, keys.transpose(2, 3)) * self.scale  # (1, h, S, T)
        if cap is not None:
            scores = torch.tanh(scores / cap) * cap
        probs = torch.softmax(scores + mask, dim=-1)
        if style == "grouped":
            out = torch.matmul(probs.view(1, self.kv, group * s, t), values).view(1, self.h, s, self.hd)
        else:
            out = torch.matmul(probs, values)  # (1, h, S, hd)
        return out.transpose(1, 2).reshape(1, s, self.h * self.hd)


class MLP(nn.Module):
    def __init__(self, cfg: MLPConfig, hidden: int):
        super().__init__()
        self.cfg, self.act = cfg, ACTIVATIONS[cfg.activation]
        i = cfg.intermediate_size
        if cfg.fused_gate_up:
            self.gate_up_proj = nn.Linear(hidden, 2 * i, bias=cfg.bias)
        else:
            if cfg.gated:
                self.gate_proj = nn.Linear(hidden, i, bias=cfg.bias)
            self.up_proj = nn.Linear(hidden, i, bias=cfg.bias)
        self.down_proj = nn.Linear(i, hidden, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.fused_gate_up:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            return self.down_proj(self.act(gate) * up)
        if self.cfg.gated:
            return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(self.act(self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, cfg: BlockConfig, hidden: int, norm: NormConfig):
        super().__init__()
        self.cfg = cfg
        self.self_attn = Attention(cfg.attention, hidden, norm)
        self.mlp = MLP(cfg.mlp, hidden)
        for attr in cfg.norms.values():
            setattr(self, attr, RMSNorm(hidden, norm))

    def norm(self, role: str, x: torch.Tensor) -> torch.Tensor:
        name = self.cfg.norms.get(role)
        return x if name is None else getattr(self, name)(x)


class Backbone(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(b, cfg.hidden_size, cfg.norm) for b in cfg.blocks)
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm)


class CacheStrategy:
    """Where K/V live between calls. One instance serves one forward call:
    :meth:`positions` gives the new tokens' absolute positions, :meth:`update` stores a layer's
    new K/V and returns what its queries attend over plus the additive mask, :meth:`outputs`
    what the call returns besides logits. ``attend_style`` picks :meth:`Attention.attend`'s
    arithmetic. :meth:`rotary` may be overridden to slice precomputed tables."""

    attend_style = "repeat"

    def positions(self, decoder: "Decoder", input_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def rotary(self, decoder: "Decoder", rope_index: int, positions: torch.Tensor):
        return decoder.rotary(rope_index, positions)

    def update(self, layer: int, block: BlockConfig, k: torch.Tensor, v: torch.Tensor):
        raise NotImplementedError

    def outputs(self) -> list[torch.Tensor]:
        return []


class Decoder(nn.Module):
    """The reference decoder. Build it with :func:`from_state_dict`."""

    def __init__(self, cfg: DecoderConfig, low_rank: dict[str, int] | None = None, context_length: int | None = None):
        """``context_length``: the longest context this instance will run (an export's); it
        picks LongRoPE's factors. Default: the model's own maximum."""
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=cfg.lm_head_bias)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        # one inv_freq table per distinct RoPE (Gemma 3: local and global), layer -> table index
        self.ropes: list = []
        self.rope_of_layer: list[int | None] = []
        for b in cfg.blocks:
            rope = b.attention.rope
            if rope.scaling == "none":
                self.rope_of_layer.append(None)
                continue
            if rope not in self.ropes:
                inv, factor = rope_inv_freq(rope, b.attention.head_dim, context_length or cfg.context_length)
                inv = torch.tensor(np.asarray(inv, dtype=np.float32))
                if rope.scaling in ("default", "linear"):  # bit-exact with transformers' float32 arithmetic
                    dim = rope.rotary_dim or b.attention.head_dim
                    inv = 1.0 / (rope.theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
                    if rope.scaling == "linear":
                        inv = inv / float(rope.params["factor"])
                idx = len(self.ropes)
                self.ropes.append(rope)
                self.register_buffer(f"inv_freq_{idx}", inv, persistent=False)
                setattr(self, f"rope_factor_{idx}", float(factor))
            self.rope_of_layer.append(self.ropes.index(rope))
        apply_low_rank(self, low_rank or {})

    def rotary(self, index: int, positions: torch.Tensor):
        """cos, sin (1, 1, S, rotary_dim) for absolute ``positions`` (S,)."""
        inv = getattr(self, f"inv_freq_{index}")
        freqs = positions[:, None].float() * inv[None, :]  # (S, rd/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (S, rd)
        cos, sin = emb.cos(), emb.sin()
        factor = getattr(self, f"rope_factor_{index}")
        if factor != 1.0:
            cos, sin = cos * factor, sin * factor
        return cos[None, None], sin[None, None]

    def run(self, input_ids: torch.Tensor, cache: CacheStrategy, last_only: bool = True,
            with_logits: bool = True) -> torch.Tensor | None:
        """Run the new tokens through every layer with ``cache`` holding K/V; logits (1, V)
        after the last token (``last_only``) or (1, S, V) for every position."""
        positions = cache.positions(self, input_ids)  # (S,)
        tables = [cache.rotary(self, j, positions) for j in range(len(self.ropes))]
        x = self.model.embed_tokens(input_ids)  # (1, S, hidden)
        if self.config.embed_scale is not None:
            x = x * self.config.embed_scale
        for i, layer in enumerate(self.model.layers):
            attn = layer.self_attn
            q, k, v = attn.project(layer.norm("attn_pre", x))
            j = self.rope_of_layer[i]
            if j is not None:
                cos, sin = tables[j]
                rd = layer.cfg.attention.rope.rotary_dim
                q, k = apply_rotary(q, cos, sin, rd), apply_rotary(k, cos, sin, rd)
            keys, values, mask = cache.update(i, layer.cfg, k, v)
            a = attn.o_proj(attn.attend(q, keys, values, mask, cache.attend_style))
            x = x + layer.norm("attn_post", a)
            x = x + layer.norm("mlp_post", layer.mlp(layer.norm("mlp_pre", x)))
        if not with_logits:
            return None
        x = self.model.norm(x[:, -1, :] if last_only else x)
        logits = self.lm_head(x)
        cap = self.config.final_logit_softcap
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor):
        from .concat import ConcatCache

        cache = ConcatCache(list(past))
        logits = self.run(input_ids, cache)
        return (logits, *cache.outputs())

    def use_fused_ops(self, fused: bool = True) -> "Decoder":
        """Attention via ``scaled_dot_product_attention`` (grouped-query, no repeated K/V) and
        RMSNorm via ``rms_norm``: the same math, which torch.onnx at opset 23 emits as one
        ``Attention`` and one ``RMSNormalization`` op each. Soft-capped attention stays unfused."""
        for m in self.modules():
            if isinstance(m, Attention):
                m.fused = fused
            elif isinstance(m, RMSNorm) and m.mode != "fp16":
                m.mode = "fused" if fused else "plain"
        return self

    def use_fp16_safe_norms(self) -> "Decoder":
        for m in self.modules():
            if isinstance(m, RMSNorm):
                m.mode = "fp16"
        return self

    def empty_cache(self, past_len: int = 0, dtype=torch.float32) -> list[torch.Tensor]:
        """Zero past K/V for the default (concat) forward: (1, kv, P, hd) per layer, K then V."""
        out = []
        for b in self.config.blocks:
            shape = (1, b.attention.num_kv_heads, past_len, b.attention.head_dim)
            out += [torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)]
        return out


def from_state_dict(cfg: DecoderConfig, state_dict: dict[str, Any], low_rank: dict[str, int] | None = None,
                    context_length: int | None = None) -> Decoder:
    """A :class:`Decoder` holding the given Hugging Face-named weights (float32, eval mode)."""
    from ..errors import ModelLoadError

    model = Decoder(cfg, low_rank=low_rank, context_length=context_length)
    sd = {k: v.detach().to(torch.float32) for k, v in state_dict.items() if "rotary_emb" not in k}
    if cfg.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not (cfg.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise ModelLoadError(f"weights do not match the {cfg.family} layout: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    return model.eval()
