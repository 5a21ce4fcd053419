"""Phi-3 / Phi-3.5 / Phi-4-mini: fused qkv_proj and gate_up_proj, LongRoPE, partial rotary (Phi-4-mini)."""

from . import Family, register
from ._hf import llama_like

register(Family(name="phi3", model_types=("phi3",),
                from_hf=lambda cfg: llama_like(cfg, "phi3", qkv_bias=False, out_bias=False, fused=True,
                                               sliding=bool(cfg.get("sliding_window"))),
                hf_class="Phi3ForCausalLM"))
