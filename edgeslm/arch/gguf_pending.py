"""TEMPORARY: the GGUF side of each family until the family modules land; then each entry moves
into its family's ``Family(gguf_archs=..., gguf_config=..., gguf_tensors=..., gguf_fix=...)``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import gguf_common as g


@dataclass(frozen=True)
class PendingGGUF:
    name: str
    gguf_archs: tuple[str, ...]
    gguf_config: Callable[[dict[str, Any]], dict[str, Any]]
    gguf_tensors: dict[str, str] = field(default_factory=dict)
    gguf_fix: Callable[[str, Any, dict[str, Any]], Any] | None = None


def _has_bias(meta, leaf: str) -> bool:
    return f"blk.0.{leaf}.bias" in meta.get("gguf.tensor_shapes", {})


def llama_config(meta: dict[str, Any]) -> dict[str, Any]:
    cfg = g.base_config(meta, "llama")
    cfg["attention_bias"] = _has_bias(meta, "attn_q")
    cfg["mlp_bias"] = _has_bias(meta, "ffn_up")
    return cfg


def qwen2_config(meta: dict[str, Any]) -> dict[str, Any]:
    return g.base_config(meta, "qwen2")  # q/k/v biases are part of Qwen2


def qwen3_config(meta: dict[str, Any]) -> dict[str, Any]:
    cfg = g.base_config(meta, "qwen3")
    cfg["attention_bias"] = _has_bias(meta, "attn_q")
    return cfg


def _gemma_scalar(meta: dict[str, Any], cfg: dict[str, Any], big_layers: int) -> float:
    """query_pre_attn_scalar: llama.cpp scales queries by 1/sqrt(head_dim), except the 27B models
    (recognized by their layer count) which use 1/sqrt(hidden / heads); ``attention.scale`` wins."""
    scale = g.arch_key(meta, "attention.scale", None)
    if scale:
        return 1.0 / float(scale) ** 2
    if cfg["num_hidden_layers"] == big_layers:
        return cfg["hidden_size"] // cfg["num_attention_heads"]
    return cfg["head_dim"]


def gemma2_config(meta: dict[str, Any]) -> dict[str, Any]:
    cfg = g.base_config(meta, "gemma2")
    n = cfg["num_hidden_layers"]
    cfg.update(
        hidden_activation="gelu_pytorch_tanh",
        query_pre_attn_scalar=_gemma_scalar(meta, cfg, big_layers=46),
        attn_logit_softcapping=g.arch_key(meta, "attn_logit_softcapping", None),
        final_logit_softcapping=g.arch_key(meta, "final_logit_softcapping", None),
        sliding_window=int(g.arch_key(meta, "attention.sliding_window", 4096)),
        layer_types=["sliding_attention" if s else "full_attention" for s in g.sliding_layers(meta, n, 2)],
    )
    return cfg


def gemma3_config(meta: dict[str, Any]) -> dict[str, Any]:
    cfg = g.base_config(meta, "gemma3_text")
    n = cfg["num_hidden_layers"]
    cfg.update(
        hidden_activation="gelu_pytorch_tanh",
        query_pre_attn_scalar=_gemma_scalar(meta, cfg, big_layers=62),
        final_logit_softcapping=g.arch_key(meta, "final_logit_softcapping", None),
        attn_logit_softcapping=g.arch_key(meta, "attn_logit_softcapping", None),
        sliding_window=int(g.arch_key(meta, "attention.sliding_window", 4096)),
        # llama.cpp hard-codes 10000 for the local layers unless the file says otherwise
        rope_local_base_freq=float(g.arch_key(meta, "rope.freq_base_swa", 10000.0)),
        layer_types=["sliding_attention" if s else "full_attention" for s in g.sliding_layers(meta, n, 6)],
    )
    return cfg


def phi3_config(meta: dict[str, Any]) -> dict[str, Any]:
    cfg = g.base_config(meta, "phi3")
    rope_dim = int(g.arch_key(meta, "rope.dimension_count", cfg["head_dim"]))
    if rope_dim != cfg["head_dim"]:
        cfg["partial_rotary_factor"] = rope_dim / cfg["head_dim"]
    window = int(g.arch_key(meta, "attention.sliding_window", 0))
    cfg["sliding_window"] = window or None  # llama.cpp writes 0 for "none" (Phi-4)
    original = int(g.arch_key(meta, "rope.scaling.original_context_length", cfg["max_position_embeddings"]))
    cfg["original_max_position_embeddings"] = original
    small = meta.get("gguf.small_tensors", {})
    if "rope_factors_long.weight" in small:
        scaling = {"rope_type": "longrope",
                   "long_factor": [float(x) for x in small["rope_factors_long.weight"]],
                   "short_factor": [float(x) for x in small["rope_factors_short.weight"]]}
        attn = g.arch_key(meta, "rope.scaling.attn_factor", None)
        scale = cfg["max_position_embeddings"] / original
        expected = math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0
        if attn is not None and not np.isclose(float(attn), expected, rtol=1e-5):
            scaling["attention_factor"] = float(attn)
        cfg["rope_scaling"] = scaling
    return cfg


GEMMA2_TENSORS = {
    **{k: v for k, v in g.LLAMA_TENSORS.items() if "ffn_norm" not in k},
    "blk.{bid}.post_attention_norm": "model.layers.{bid}.post_attention_layernorm",
    "blk.{bid}.ffn_norm": "model.layers.{bid}.pre_feedforward_layernorm",
    "blk.{bid}.post_ffw_norm": "model.layers.{bid}.post_feedforward_layernorm",
}
PHI3_TENSORS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "rope_factors_long": g.SKIP,
    "rope_factors_short": g.SKIP,
    "blk.{bid}.attn_norm": "model.layers.{bid}.input_layernorm",
    "blk.{bid}.attn_qkv": "model.layers.{bid}.self_attn.qkv_proj",
    "blk.{bid}.attn_output": "model.layers.{bid}.self_attn.o_proj",
    "blk.{bid}.ffn_norm": "model.layers.{bid}.post_attention_layernorm",
    "blk.{bid}.ffn_up": "model.layers.{bid}.mlp.gate_up_proj",  # gate and up fused, gate first
    "blk.{bid}.ffn_down": "model.layers.{bid}.mlp.down_proj",
}

PENDING = {p.name: p for p in [
    PendingGGUF("llama", ("llama",), llama_config, g.LLAMA_TENSORS, g.unpermute_qk),
    PendingGGUF("qwen2", ("qwen2",), qwen2_config, g.LLAMA_TENSORS),
    PendingGGUF("qwen3", ("qwen3",), qwen3_config, {**g.LLAMA_TENSORS, **g.QK_NORM_TENSORS}),
    PendingGGUF("gemma2", ("gemma2",), gemma2_config, GEMMA2_TENSORS, g.gemma_norms),
    PendingGGUF("gemma3", ("gemma3",), gemma3_config, {**GEMMA2_TENSORS, **g.QK_NORM_TENSORS}, g.gemma_norms),
    PendingGGUF("phi3", ("phi3",), phi3_config, PHI3_TENSORS),
]}
