"""Qwen2 / Qwen2.5: biases on q/k/v (not on o); sliding window on the layers ``layer_types`` names."""

from .. import gguf_common as gguf
from . import Family, register
from ._hf import llama_like

register(Family(name="qwen2", model_types=("qwen2",),
                from_hf=lambda cfg: llama_like(cfg, "qwen2", qkv_bias=True, out_bias=False,
                                               sliding=bool(cfg.get("use_sliding_window"))),
                gguf_archs=("qwen2",), gguf_config=lambda meta: gguf.base_config(meta, "qwen2"),
                gguf_tensors=gguf.LLAMA_TENSORS, hf_class="Qwen2ForCausalLM"))
