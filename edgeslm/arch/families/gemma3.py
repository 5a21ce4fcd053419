"""Gemma 3 (text): Gemma 2's layout plus q/k norms, a local RoPE base on sliding layers and a
global one (with linear scaling on 4B+) on full-attention layers, five sliding layers per global."""

from .. import gguf_common as gguf
from . import Family, register
from .gemma2 import GGUF_TENSORS, gemma_gguf, gemma_like


def from_hf(cfg: dict):
    cfg = dict(cfg.get("text_config") or cfg)  # a multimodal gemma3 config carries the text model inside
    if "rope_parameters" not in cfg and "rope_local_base_freq" in cfg:  # config.json before transformers 5
        glob = dict(cfg.get("rope_scaling") or {"rope_type": "default"})
        glob["rope_theta"] = cfg.get("rope_theta", 1_000_000.0)
        cfg["rope_parameters"] = {"full_attention": glob,
                                  "sliding_attention": {"rope_type": "default", "rope_theta": cfg["rope_local_base_freq"]}}
    if not cfg.get("layer_types") and cfg.get("sliding_window_pattern"):
        n, k = int(cfg["num_hidden_layers"]), int(cfg["sliding_window_pattern"])
        cfg["layer_types"] = ["full_attention" if (i + 1) % k == 0 else "sliding_attention" for i in range(n)]
    return gemma_like(cfg, "gemma3", qk_norm=True)


def from_gguf(meta: dict) -> dict:
    cfg = gemma_gguf(meta, "gemma3_text", pattern=6, big_layers=62)
    # the local layers' base: llama.cpp hard-codes 10000 unless the file says otherwise
    cfg["rope_local_base_freq"] = float(gguf.arch_key(meta, "rope.freq_base_swa", 10000.0))
    return cfg  # rope_scaling (linear 8 on 4B+) applies to the global layers only, as in llama.cpp


register(Family(name="gemma3", model_types=("gemma3_text", "gemma3"), from_hf=from_hf,
                gguf_archs=("gemma3",), gguf_config=from_gguf, gguf_tensors={**GGUF_TENSORS, **gguf.QK_NORM_TENSORS},
                gguf_fix=gguf.gemma_norms, hf_class="Gemma3ForCausalLM"))
