"""Gemma 2: sandwich norms stored as (1 + w), embeddings scaled by sqrt(hidden), attention and
final-logit soft-capping, query_pre_attn_scalar, sliding-window and global layers alternating."""

from dataclasses import replace

from ..config import NormConfig
from . import Family, register
from ._hf import llama_like

GEMMA_NORMS = {"attn_pre": "input_layernorm", "attn_post": "post_attention_layernorm",
               "mlp_pre": "pre_feedforward_layernorm", "mlp_post": "post_feedforward_layernorm"}


def gemma_like(cfg: dict, family: str, qk_norm: bool):
    base = llama_like(cfg, family, qk_norm=qk_norm, sliding=True)
    scalar = cfg.get("query_pre_attn_scalar")
    cap = cfg.get("attn_logit_softcapping")
    blocks = [replace(b, norms=dict(GEMMA_NORMS),
                      attention=replace(b.attention, scale=float(scalar) ** -0.5 if scalar else None,
                                        logit_softcap=float(cap) if cap else None))
              for b in base.blocks]
    final_cap = cfg.get("final_logit_softcapping")
    return replace(base, blocks=tuple(blocks), norm=NormConfig(eps=base.norm.eps, offset=1.0),
                   embed_scale=float(cfg["hidden_size"]) ** 0.5,
                   final_logit_softcap=float(final_cap) if final_cap else None,
                   tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)))


register(Family(name="gemma2", model_types=("gemma2",), from_hf=lambda cfg: gemma_like(cfg, "gemma2", qk_norm=False),
                hf_class="Gemma2ForCausalLM"))
