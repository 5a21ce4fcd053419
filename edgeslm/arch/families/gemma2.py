"""Gemma 2: sandwich norms stored as (1 + w), embeddings scaled by sqrt(hidden), attention and
final-logit soft-capping, query_pre_attn_scalar, sliding-window and global layers alternating."""

from dataclasses import replace

from .. import gguf_common as gguf
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


#: llama.cpp's names: attn_norm/post_attention_norm around attention, ffn_norm/post_ffw_norm around the MLP
GGUF_TENSORS = {
    **{k: v for k, v in gguf.LLAMA_TENSORS.items() if not k.endswith("ffn_norm")},
    "blk.{bid}.post_attention_norm": "model.layers.{bid}.post_attention_layernorm",
    "blk.{bid}.ffn_norm": "model.layers.{bid}.pre_feedforward_layernorm",
    "blk.{bid}.post_ffw_norm": "model.layers.{bid}.post_feedforward_layernorm",
}


def gemma_gguf(meta: dict, model_type: str, *, pattern: int, big_layers: int) -> dict:
    """What Gemma 2 and 3 share in llama.cpp: gelu-tanh, sliding layers every ``pattern``-th one
    global (``set_swa_pattern``), and queries scaled by 1/sqrt(head_dim) except in the 27B
    models (``big_layers`` layers), which use 1/sqrt(hidden / heads) (llama.cpp reads no key
    for it; ``query_pre_attn_scalar`` in Hugging Face's configs)."""
    cfg = gguf.base_config(meta, model_type)
    n = cfg["num_hidden_layers"]
    big = n == big_layers
    cfg.update(
        hidden_activation="gelu_pytorch_tanh",
        query_pre_attn_scalar=cfg["hidden_size"] // cfg["num_attention_heads"] if big else cfg["head_dim"],
        attn_logit_softcapping=gguf.arch_key(meta, "attn_logit_softcapping", None),
        final_logit_softcapping=gguf.arch_key(meta, "final_logit_softcapping", None),
        sliding_window=int(gguf.arch_key(meta, "attention.sliding_window", 4096)),
        layer_types=["sliding_attention" if s else "full_attention" for s in gguf.sliding_layers(meta, n, pattern)],
    )
    return cfg


register(Family(name="gemma2", model_types=("gemma2",), from_hf=lambda cfg: gemma_like(cfg, "gemma2", qk_norm=False),
                gguf_archs=("gemma2",), gguf_config=lambda meta: gemma_gguf(meta, "gemma2", pattern=2, big_layers=46),
                gguf_tensors=GGUF_TENSORS, gguf_fix=gguf.gemma_norms, hf_class="Gemma2ForCausalLM"))
