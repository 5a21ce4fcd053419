"""Qwen3: RMSNorm over each head's q and k before rotation; head_dim independent of hidden size."""

from . import Family, register
from ._hf import llama_like

register(Family(name="qwen3", model_types=("qwen3",),
                from_hf=lambda cfg: llama_like(cfg, "qwen3", qk_norm=True, sliding=bool(cfg.get("use_sliding_window"))),
                hf_class="Qwen3ForCausalLM"))
