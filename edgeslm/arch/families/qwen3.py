"""Qwen3: RMSNorm over each head's q and k before rotation; head_dim independent of hidden size."""

from .. import gguf_common as gguf
from . import Family, register
from ._hf import llama_like


def from_gguf(meta: dict) -> dict:
    cfg = gguf.base_config(meta, "qwen3")  # head_dim from attention.key_length
    cfg["attention_bias"] = gguf.has_tensor(meta, "blk.0.attn_q.bias")
    return cfg


register(Family(name="qwen3", model_types=("qwen3",),
                from_hf=lambda cfg: llama_like(cfg, "qwen3", qk_norm=True, sliding=bool(cfg.get("use_sliding_window"))),
                gguf_archs=("qwen3",), gguf_config=from_gguf,
                gguf_tensors={**gguf.LLAMA_TENSORS, **gguf.QK_NORM_TENSORS}, hf_class="Qwen3ForCausalLM"))
