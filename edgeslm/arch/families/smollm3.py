"""SmolLM3: Llama-shaped, with no rotary embedding on every ``no_rope_layer_interval``-th layer (NoPE)."""

from dataclasses import replace

from .. import gguf_common as gguf
from ..config import RopeConfig
from . import Family, register
from ._hf import llama_like


def from_hf(cfg: dict):
    base = llama_like(cfg, "smollm3", sliding=bool(cfg.get("use_sliding_window")))
    n, every = base.num_layers, int(cfg.get("no_rope_layer_interval") or 4)
    use_rope = cfg.get("no_rope_layers") or [int((i + 1) % every != 0) for i in range(n)]
    blocks = [b if use_rope[i] else replace(b, attention=replace(b.attention, rope=RopeConfig(scaling="none")))
              for i, b in enumerate(base.blocks)]
    return base.with_blocks(blocks)


def from_gguf(meta: dict) -> dict:
    """llama.cpp converts SmolLM3 as Llama (Q/K rows permuted) and hard-codes its NoPE step: no
    RoPE on layers where (i + 1) % 4 == 0; the file has no key for it."""
    cfg = gguf.base_config(meta, "smollm3")
    n = cfg["num_hidden_layers"]
    cfg.update(no_rope_layer_interval=4, no_rope_layers=[int((i + 1) % 4 != 0) for i in range(n)],
               attention_bias=gguf.has_tensor(meta, "blk.0.attn_q.bias"),
               mlp_bias=gguf.has_tensor(meta, "blk.0.ffn_up.bias"))
    return cfg


register(Family(name="smollm3", model_types=("smollm3",), from_hf=from_hf, gguf_archs=("smollm3",),
                gguf_config=from_gguf, gguf_tensors=gguf.LLAMA_TENSORS, gguf_fix=gguf.unpermute_qk,
                hf_class="SmolLM3ForCausalLM"))
