"""Llama 1-3.x (Llama 3.x rope scaling included), and SmolLM2, TinyLlama and other Llama-shaped models."""

from .. import gguf_common as gguf
from . import Family, register
from ._hf import llama_like


def from_gguf(meta: dict) -> dict:
    """llama.cpp's ``llama`` architecture (Mistral 7B files use it too: same math, no window)."""
    cfg = gguf.base_config(meta, "llama")
    cfg["attention_bias"] = gguf.has_tensor(meta, "blk.0.attn_q.bias")
    cfg["mlp_bias"] = gguf.has_tensor(meta, "blk.0.ffn_up.bias")
    return cfg


register(Family(name="llama", model_types=("llama",), from_hf=lambda cfg: llama_like(cfg, "llama"),
                gguf_archs=("llama",), gguf_config=from_gguf, gguf_tensors=gguf.LLAMA_TENSORS,
                gguf_fix=gguf.unpermute_qk, hf_class="LlamaForCausalLM"))
