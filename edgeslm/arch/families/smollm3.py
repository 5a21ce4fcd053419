"""SmolLM3: Llama-shaped, with no rotary embedding on every ``no_rope_layer_interval``-th layer (NoPE)."""

from dataclasses import replace

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


register(Family(name="smollm3", model_types=("smollm3",), from_hf=from_hf, hf_class="SmolLM3ForCausalLM"))
