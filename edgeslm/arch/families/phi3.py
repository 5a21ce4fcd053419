"""Phi-3 / Phi-3.5 / Phi-4-mini: fused qkv_proj and gate_up_proj, LongRoPE, partial rotary (Phi-4-mini)."""

import math

from .. import gguf_common as gguf
from . import Family, register
from ._hf import llama_like

GGUF_TENSORS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "rope_factors_long": gguf.SKIP,
    "rope_factors_short": gguf.SKIP,
    "blk.{bid}.attn_norm": "model.layers.{bid}.input_layernorm",
    "blk.{bid}.attn_qkv": "model.layers.{bid}.self_attn.qkv_proj",
    "blk.{bid}.attn_output": "model.layers.{bid}.self_attn.o_proj",
    "blk.{bid}.ffn_norm": "model.layers.{bid}.post_attention_layernorm",
    "blk.{bid}.ffn_up": "model.layers.{bid}.mlp.gate_up_proj",  # gate and up fused, gate first
    "blk.{bid}.ffn_down": "model.layers.{bid}.mlp.down_proj",
}


def from_gguf(meta: dict) -> dict:
    """Partial rotary from ``rope.dimension_count``; LongRoPE factors from the
    ``rope_factors_long/short`` tensors; ``sliding_window`` 0 means none (Phi-4)."""
    cfg = gguf.base_config(meta, "phi3")
    rope_dim = int(gguf.arch_key(meta, "rope.dimension_count", cfg["head_dim"]))
    if rope_dim != cfg["head_dim"]:
        cfg["partial_rotary_factor"] = rope_dim / cfg["head_dim"]
    cfg["sliding_window"] = int(gguf.arch_key(meta, "attention.sliding_window", 0)) or None
    original = int(gguf.arch_key(meta, "rope.scaling.original_context_length", cfg["max_position_embeddings"]))
    cfg["original_max_position_embeddings"] = original
    small = meta.get("gguf.small_tensors", {})
    if "rope_factors_long.weight" in small:
        scaling = {"rope_type": "longrope", "long_factor": small["rope_factors_long.weight"].tolist(),
                   "short_factor": small["rope_factors_short.weight"].tolist()}
        attn = gguf.arch_key(meta, "rope.scaling.attn_factor", None)
        scale = cfg["max_position_embeddings"] / original
        implied = math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0
        if attn is not None and not math.isclose(float(attn), implied, rel_tol=1e-5):
            scaling["attention_factor"] = float(attn)
        cfg["rope_scaling"] = scaling
    return cfg


register(Family(name="phi3", model_types=("phi3",),
                from_hf=lambda cfg: llama_like(cfg, "phi3", qkv_bias=False, out_bias=False, fused=True,
                                               sliding=bool(cfg.get("sliding_window"))),
                gguf_archs=("phi3",), gguf_config=from_gguf, gguf_tensors=GGUF_TENSORS,
                hf_class="Phi3ForCausalLM"))
