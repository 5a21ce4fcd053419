"""Llama 1-3.x (Llama 3.x rope scaling included), and SmolLM2, TinyLlama and other Llama-shaped models."""

from . import Family, register
from ._hf import llama_like

register(Family(name="llama", model_types=("llama",), from_hf=lambda cfg: llama_like(cfg, "llama"),
                hf_class="LlamaForCausalLM"))
