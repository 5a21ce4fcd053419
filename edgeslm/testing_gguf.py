"""Tiny GGUF files of every family, written in-process the way llama.cpp's converter writes them.

``make_family_gguf(path, "gemma3")`` draws a random model from the family's tiny Hugging Face
config (:func:`edgeslm.testing.fake_config`, widened so rows are whole 256-value K-quant
blocks), then writes it with llama.cpp's tensor names and conventions (Q/K rows permuted for
Llama, Gemma norms stored as ``1 + w``, Llama 3 ``rope_freqs``, Phi-3 LongRoPE factor tensors),
its metadata keys, a BPE vocabulary, special tokens and a chat template, and each weight in a
chosen ggml type: K-quants (Q4_K/Q5_K/Q6_K, :mod:`edgeslm.testing_kquants`), legacy blocks
(Q4_0/Q4_1/Q5_0/Q5_1/Q8_0, gguf-py's quantizer), F16, BF16, F32.

It returns a :class:`TinyGGUF` holding, next to the file, the Hugging Face config and the
weights *as the file's blocks decode*, in Hugging Face layout: a transformers model built from
those is what loading the file must reproduce. That reference is computed on the writer's side
without inverting anything the loader undoes: quantization is row-wise, so permuting the rows
of the encoded blocks equals encoding permuted rows, and Gemma norms are drawn on a 1/256 grid
where ``(w + 1) - 1 == w`` exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .testing import CHAT_TEMPLATE, FAMILY_TRAITS, SPECIAL_TOKENS, fake_config, make_tiny_tokenizer

#: families with a GGUF architecture, and the llama.cpp architecture their files carry
GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2",
             "gemma3": "gemma3", "phi3": "phi3", "smollm3": "smollm3"}

#: what makes each tiny model exercise its family's GGUF conventions, beyond fake_config: widths
#: that hold K-quant blocks, and the features llama.cpp writes in its own way.
GGUF_TRAITS: dict[str, dict[str, Any]] = {
    "llama": {"max_position_embeddings": 1024,
              "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 256}},
    # llama.cpp runs Mistral files as "llama" and has no key for the window: none here either
    "mistral": {"sliding_window": None},
    "qwen2": {"tie_word_embeddings": False},
    "qwen3": {},
    # llama.cpp scales queries by 1/sqrt(head_dim) (below 27B): query_pre_attn_scalar = head_dim
    "gemma2": {"query_pre_attn_scalar": 24, "attn_logit_softcapping": 5.0, "final_logit_softcapping": 8.0},
    "gemma3": {"final_logit_softcapping": 10.0},
    "phi3": {"max_position_embeddings": 1024, "original_max_position_embeddings": 256, "sliding_window": 7},
    # llama.cpp's NoPE step is 4, whatever the config said
    "smollm3": {"no_rope_layer_interval": 4, "no_rope_layers": [1, 1, 1, 0], "rope_theta": 2000000.0},
}
WIDE = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 64}

#: the default type plan: the 2-D weights take these types in turn, so every family's file mixes
#: K-quant and legacy blocks (a K-quant on a row that is not whole 256-blocks falls back to Q8_0)
MIXED = ("Q4_K", "Q5_0", "Q6_K", "Q4_1", "Q5_K", "Q8_0", "Q4_0", "Q5_1", "F16", "BF16")
K_TYPES = ("Q4_K", "Q5_K", "Q6_K")
LEGACY_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")

# Hugging Face leaf -> llama.cpp leaf, per family (the writer's side of the name tables)
_LLAMA = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
          "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
          "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}
_GEMMA = {**_LLAMA, "post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
          "post_feedforward_layernorm": "post_ffw_norm"}
_PHI3 = {**_LLAMA, "self_attn.qkv_proj": "attn_qkv", "mlp.gate_up_proj": "ffn_up"}
_LEAVES = {"gemma2": _GEMMA, "gemma3": _GEMMA, "phi3": _PHI3}
_GLOBAL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}


@dataclass
class TinyGGUF:
    path: Path
    family: str
    hf_config: dict[str, Any]  # config.json dict of the model the file holds
    weights: dict[str, np.ndarray]  # Hugging Face names -> float32, as the file's blocks decode
    types: dict[str, str] = field(default_factory=dict)  # gguf tensor name -> ggml type name
    eos_token_ids: tuple[int, ...] = ()  # what the loader must find: metadata ids, then the turn end

    def reference_model(self):
        """The transformers model of ``hf_config`` holding ``weights``."""
        import torch
        import transformers

        config = transformers.AutoConfig.for_model(**self.hf_config)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
        state = {k: torch.from_numpy(v) for k, v in self.weights.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
        if "lm_head.weight" in missing:
            model.tie_weights()
        return model


def gguf_hf_config(family: str, vocab_size: int) -> dict[str, Any]:
    cfg = fake_config(family, vocab_size=vocab_size)
    cfg.update(WIDE)
    cfg.update({k: v for k, v in FAMILY_TRAITS[family].items() if k == "head_dim"})  # families' own head sizes
    cfg.update(GGUF_TRAITS[family])
    if family == "phi3":
        rd = int(cfg["head_dim"] * cfg["partial_rotary_factor"]) // 2
        rng = np.random.default_rng(7)
        cfg["rope_scaling"] = {"rope_type": "longrope", "short_factor": np.round(rng.uniform(1, 2, rd), 3).tolist(),
                               "long_factor": np.round(rng.uniform(2, 8, rd), 3).tolist()}
    return cfg


def _gguf_name(family: str, hf: str) -> str:
    if hf in _GLOBAL:
        return _GLOBAL[hf]
    _, _, layer, rest = hf.split(".", 3)  # model.layers.{i}.{leaf}.{weight|bias}
    leaf, suffix = rest.rsplit(".", 1)
    return f"blk.{layer}.{_LEAVES.get(family, _LLAMA)[leaf]}.{suffix}"


def permute_qk(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's Q/K row order (interleaved rotary halves); transformers undoes it on load."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def add_shape_keys(w, cfg: dict[str, Any]) -> None:
    """Context length, widths, layer count and head counts of the Hugging Face config ``cfg``."""
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])


def add_bpe_tokenizer(w, tok_json: dict[str, Any], specials, eos_token_id: int = 2,
                      eot_token_id: int | None = None) -> None:
    """A byte-level BPE vocabulary (``tok_json``: a tokenizer.json dict) as llama.cpp's "gpt2"
    tokenizer: tokens by id, ``specials`` as CONTROL, merges, bos 1, the eos (and end-of-turn)
    ids, no automatic bos, and the ChatML template."""
    import gguf

    tokens = [t for t, _ in sorted(tok_json["model"]["vocab"].items(), key=lambda kv: kv[1])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok_json["model"]["merges"]])
    w.add_bos_token_id(1)
    w.add_eos_token_id(eos_token_id)
    if eot_token_id is not None:
        w.add_eot_token_id(eot_token_id)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)


def write_gguf(w) -> None:
    """Write what ``w`` (a gguf.GGUFWriter) holds: header, metadata, tensors; close the file."""
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _encode(w: np.ndarray, type_name: str) -> tuple[np.ndarray, np.ndarray]:
    """(bytes or values to write, float32 as the file will decode) for one tensor."""
    import gguf

    from .testing_kquants import ENCODERS

    if type_name == "F32":
        return w.astype(np.float32), w.astype(np.float32)
    if type_name == "F16":
        return w.astype(np.float16), w.astype(np.float16).astype(np.float32)
    qtype = gguf.GGMLQuantizationType[type_name]
    raw = ENCODERS[type_name](w) if type_name in ENCODERS else gguf.quants.quantize(w.astype(np.float32), qtype)
    return raw, gguf.quants.dequantize(raw, qtype).astype(np.float32).reshape(w.shape)


def _random_weights(cfg: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    import torch
    import transformers

    config = transformers.AutoConfig.for_model(**cfg)
    from transformers.initialization import no_init_weights

    with no_init_weights():
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    rng = np.random.default_rng(seed)
    gemma = cfg["model_type"].startswith("gemma")
    out = {}
    for name, p in model.state_dict().items():
        if name == "lm_head.weight" and cfg.get("tie_word_embeddings"):
            continue
        if p.dim() == 2:
            out[name] = rng.normal(0.0, 0.2, tuple(p.shape)).astype(np.float32)
        elif name.endswith("norm.weight"):  # on a 1/256 grid: (w + 1) - 1 == w in float32
            centre = 0.0 if gemma else 1.0
            out[name] = (centre + np.round(rng.uniform(-0.5, 0.5, tuple(p.shape)) * 256) / 256).astype(np.float32)
        else:  # biases
            out[name] = rng.normal(0.0, 0.1, tuple(p.shape)).astype(np.float32)
    return out


def make_family_gguf(path: str | Path, family: str, types: dict[str, str] | tuple[str, ...] = MIXED,
                     seed: int = 0) -> TinyGGUF:
    """Write a tiny random ``family`` model as a GGUF file. ``types``: a cycle of ggml type names
    for the 2-D weights in file order (default :data:`MIXED`), or ``{gguf tensor name: type}``
    (unlisted 2-D weights F32). 1-D tensors (norms, biases) are F32, as llama.cpp writes them."""
    import gguf

    path = Path(path)
    tok = make_tiny_tokenizer()
    cfg = gguf_hf_config(family, tok.get_vocab_size())
    hf_weights = _random_weights(cfg, seed)

    w = gguf.GGUFWriter(str(path), GGUF_ARCH[family])
    w.add_name(f"tiny-{family}")
    extra = _add_hparams(w, family, cfg)
    # the end-of-turn token reaches the loader through the template (gemma3: eos is
    # <|endoftext|>) or through eot_token_id (qwen3)
    eos = {"gemma3": 0, "qwen3": 0}.get(family, 2)
    add_bpe_tokenizer(w, json.loads(tok.to_str()), SPECIAL_TOKENS, eos, 2 if family == "qwen3" else None)
    reference, written = _add_tensors(w, family, cfg, hf_weights, types, extra)
    write_gguf(w)
    return TinyGGUF(path=path, family=family, hf_config=cfg, weights=reference, types=written,
                    eos_token_ids=(eos,) if eos == 2 else (eos, 2))


def _add_hparams(w, family: str, cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    """The model's shape and RoPE keys, as convert_hf_to_gguf.py writes them, then the family's
    own; returns the F32 tensors that go with them (Llama 3 rope_freqs, Phi-3 LongRoPE factors)."""
    import gguf

    hd = cfg["head_dim"]
    add_shape_keys(w, cfg)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    rope = cfg.get("rope_parameters") or {}
    theta = (rope.get("full_attention") or rope).get("rope_theta", cfg.get("rope_theta", 10000.0))
    w.add_rope_freq_base(theta)
    w.add_rope_dimension_count(int(hd * cfg.get("partial_rotary_factor", 1.0)))
    extra: dict[str, np.ndarray] = {}
    scaling = cfg.get("rope_scaling") or {}
    if scaling.get("rope_type") == "llama3":  # convert_hf_to_gguf.py: factors, no parameters
        from .arch.gguf_common import llama3_factors

        extra["rope_freqs.weight"] = llama3_factors(scaling, theta, hd).astype(np.float32)
    extra.update(_add_family_keys(w, family, cfg))
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    return extra


def _add_family_keys(w, family: str, cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    """Gemma's soft-capping and sliding windows, Gemma 3's linear RoPE scaling, Phi-3's LongRoPE
    (keys, and the factor tensors it returns)."""
    import gguf

    extra: dict[str, np.ndarray] = {}
    if family == "gemma2":
        w.add_attn_logit_softcapping(cfg["attn_logit_softcapping"])
        w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
        w.add_sliding_window(cfg["sliding_window"])
    if family == "gemma3":
        glob = cfg["rope_parameters"]["full_attention"]
        if glob.get("rope_type") == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(glob["factor"])
        w.add_sliding_window(cfg["sliding_window"])
        w.add_sliding_window_pattern([t == "sliding_attention" for t in cfg["layer_types"]])
        if cfg.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
    if family == "phi3":
        import math

        orig = cfg["original_max_position_embeddings"]
        w.add_rope_scaling_orig_ctx_len(orig)
        w.add_sliding_window(cfg.get("sliding_window") or 0)
        scale = cfg["max_position_embeddings"] / orig
        w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(orig)))
        extra["rope_factors_long.weight"] = np.asarray(cfg["rope_scaling"]["long_factor"], np.float32)
        extra["rope_factors_short.weight"] = np.asarray(cfg["rope_scaling"]["short_factor"], np.float32)
    return extra


def _add_tensors(w, family: str, cfg: dict[str, Any], hf_weights: dict[str, np.ndarray], types,
                 extra: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Write ``extra`` (F32), then the weights in llama.cpp's order (embedding, output norm,
    output, then the layers), each in its planned type; returns (Hugging Face name -> float32 as
    the file decodes, gguf name -> type name)."""
    import gguf

    order = sorted(hf_weights, key=lambda n: (0 if n in _GLOBAL else 1,
                                              int(n.split(".")[2]) if n.startswith("model.layers.") else -1, n))
    choose = _type_plan(types)
    reference, written = {}, {}
    for name in extra:
        w.add_tensor(name, extra[name])
        written[name] = "F32"
    for hf in order:
        arr = hf_weights[hf]
        name = _gguf_name(family, hf)
        kind = "F32" if arr.ndim == 1 else choose(name, arr)
        data, decoded = _encode(arr, kind)
        reference[hf] = decoded
        data = _as_llama_cpp_stores(family, cfg, hf, data)
        qtype = gguf.GGMLQuantizationType[kind]
        w.add_tensor(name, data, raw_dtype=qtype if data.dtype == np.uint8 else None)
        written[name] = kind
    return reference, written


def _type_plan(types: dict[str, str] | tuple[str, ...]):
    """(gguf name, 2-D weight) -> ggml type name: from the dict (unlisted: F32) or the next of the
    cycle; a K-quant on rows that are not whole 256-value blocks falls back to Q8_0."""
    cycle = iter(types * 1000) if not isinstance(types, dict) else None

    def choose(name: str, arr: np.ndarray) -> str:
        kind = types.get(name, "F32") if cycle is None else next(cycle)
        return "Q8_0" if kind in K_TYPES and arr.shape[-1] % 256 else kind

    return choose


def _as_llama_cpp_stores(family: str, cfg: dict[str, Any], hf: str, data: np.ndarray) -> np.ndarray:
    """An encoded tensor as llama.cpp stores it: Llama-family Q/K rows permuted (rows of blocks:
    the same as encoding permuted rows), Gemma norms as ``1 + w``."""
    if family in ("llama", "mistral", "smollm3") and (".q_proj." in hf or ".k_proj." in hf):
        heads = cfg["num_attention_heads"] if ".q_proj." in hf else cfg["num_key_value_heads"]
        data = permute_qk(data, heads)
    if family.startswith("gemma") and hf.endswith("norm.weight"):
        data = data + np.float32(1.0)
    return data
