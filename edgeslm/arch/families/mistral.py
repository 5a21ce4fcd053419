"""Mistral: Llama-shaped, with a sliding attention window on every layer when the config sets one."""

from . import Family, register
from ._hf import llama_like

register(Family(name="mistral", model_types=("mistral",),
                from_hf=lambda cfg: llama_like(cfg, "mistral", qkv_bias=False, out_bias=False, sliding=True),
                hf_class="MistralForCausalLM"))
