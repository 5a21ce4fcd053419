"""llama.cpp's GGUF conventions, undone into Hugging Face's: the parts the families share.

A family declares its GGUF side on its :class:`~edgeslm.arch.families.Family` (``gguf_archs``,
``gguf_config``, ``gguf_tensors``, ``gguf_fix``) using the helpers here; the loader
(:mod:`edgeslm.sources.gguf`) does the rest. What llama.cpp's ``convert_hf_to_gguf.py`` does,
and where it is undone:

=====================================  =========================================================
llama.cpp                              undone by
=====================================  =========================================================
HF names -> ``blk.N.attn_q`` ...       the family's ``gguf_tensors`` table (:func:`hf_name`)
Q/K rows permuted (Llama, Mistral)     :func:`unpermute_qk` in the llama family's ``gguf_fix``
Gemma norms stored as ``1 + w``        :func:`gemma_norms` (``gguf_fix`` of gemma2/gemma3)
Llama 3 RoPE params -> ``rope_freqs``  :func:`llama3_rope_from_factors`, in :func:`rope_scaling`
tied head: ``output.weight`` omitted   :func:`base_config` (``tie_word_embeddings``)
=====================================  =========================================================

A family's ``gguf_config(meta)`` receives the file's metadata (long string arrays as their
lengths) plus two keys the loader adds, so that config can depend on tensors too:

- ``gguf.tensor_shapes``: ``{gguf name: shape}`` (numpy order) of every tensor;
- ``gguf.small_tensors``: ``{gguf name: float32 array}`` of the 1-D tensors that carry config
  rather than weights (:data:`CONFIG_TENSORS`: ``rope_freqs``, ``rope_factors_long/short``).

It returns a config.json-style dict (Hub spelling: ``rope_theta``, ``rope_scaling``...) that
``transformers.AutoConfig.for_model(**cfg)`` accepts. Nothing here imports torch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import ModelLoadError

#: 1-D tensors that describe the model (RoPE frequency factors) instead of holding weights.
CONFIG_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")
SKIP = ""  # a gguf_tensors value: read for the config only, no Hugging Face weight

#: llama.cpp's names of a Llama-shaped decoder -> Hugging Face's ("{bid}": the layer index;
#: ".weight"/".bias" are appended by :func:`hf_name`).
LLAMA_TENSORS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "rope_freqs": SKIP,
    "blk.{bid}.attn_norm": "model.layers.{bid}.input_layernorm",
    "blk.{bid}.attn_q": "model.layers.{bid}.self_attn.q_proj",
    "blk.{bid}.attn_k": "model.layers.{bid}.self_attn.k_proj",
    "blk.{bid}.attn_v": "model.layers.{bid}.self_attn.v_proj",
    "blk.{bid}.attn_output": "model.layers.{bid}.self_attn.o_proj",
    "blk.{bid}.ffn_norm": "model.layers.{bid}.post_attention_layernorm",
    "blk.{bid}.ffn_gate": "model.layers.{bid}.mlp.gate_proj",
    "blk.{bid}.ffn_up": "model.layers.{bid}.mlp.up_proj",
    "blk.{bid}.ffn_down": "model.layers.{bid}.mlp.down_proj",
}
QK_NORM_TENSORS = {
    "blk.{bid}.attn_q_norm": "model.layers.{bid}.self_attn.q_norm",
    "blk.{bid}.attn_k_norm": "model.layers.{bid}.self_attn.k_norm",
}


def hf_name(table: dict[str, str], gguf_name: str) -> str | None:
    """The Hugging Face name of a GGUF tensor under ``table``; ``""`` for a config-only tensor,
    None for a name the table does not know."""
    stem, dot, suffix = gguf_name.rpartition(".")
    if not dot or suffix not in ("weight", "bias"):
        return None
    key, bid = stem, None
    parts = stem.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit():
        key, bid = f"blk.{{bid}}.{parts[2]}", parts[1]
    target = table.get(key)
    if target is None:
        return None
    if target == SKIP:
        return SKIP
    return f"{target.format(bid=bid)}.{suffix}"


# -- metadata ------------------------------------------------------------------------------

def arch_key(meta: dict[str, Any], name: str, default: Any = KeyError) -> Any:
    """``{general.architecture}.{name}``; a required key that is missing is one clear error."""
    arch = meta.get("general.architecture", "?")
    value = meta.get(f"{arch}.{name}")
    if value is None:
        if default is KeyError:
            raise ModelLoadError(f"GGUF metadata lacks '{arch}.{name}', needed to build the model")
        return default
    return value


def _one(meta: dict[str, Any], name: str, default: Any = KeyError) -> Any:
    """A per-model value that some files write per layer (an array): it must then be uniform."""
    value = arch_key(meta, name, default)
    if isinstance(value, (list, np.ndarray)):
        values = {int(v) for v in np.asarray(value).reshape(-1)}
        if len(values) != 1:
            raise ModelLoadError(f"GGUF '{name}' differs between layers ({sorted(values)}); "
                                 "edgeslm needs one value for every layer")
        return values.pop()
    return value


def has_tensor(meta: dict[str, Any], name: str) -> bool:
    return name in meta.get("gguf.tensor_shapes", {})


def base_config(meta: dict[str, Any], model_type: str) -> dict[str, Any]:
    """The config.json keys every decoder family shares, from llama.cpp's generic keys."""
    shapes = meta.get("gguf.tensor_shapes", {})
    hidden = int(arch_key(meta, "embedding_length"))
    heads = int(_one(meta, "attention.head_count"))
    kv_heads = int(_one(meta, "attention.head_count_kv", heads))
    head_dim = arch_key(meta, "attention.key_length", None)
    head_dim = int(head_dim) if head_dim is not None else hidden // heads
    embd = shapes.get("token_embd.weight")
    vocab = int(embd[0]) if embd else int(arch_key(meta, "vocab_size", None) or meta.get("tokenizer.ggml.tokens", 0))
    ffn = arch_key(meta, "feed_forward_length", None)
    if ffn is None and "blk.0.ffn_down.weight" in shapes:
        ffn = shapes["blk.0.ffn_down.weight"][-1]
    if ffn is None:
        raise ModelLoadError("GGUF metadata lacks the feed-forward width (feed_forward_length)")
    cfg: dict[str, Any] = {
        "model_type": model_type,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": int(_one(meta, "feed_forward_length", ffn)),
        "num_hidden_layers": int(arch_key(meta, "block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": int(arch_key(meta, "context_length", 2048)),
        "rms_norm_eps": float(arch_key(meta, "attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(arch_key(meta, "rope.freq_base", 10000.0)),
        # llama.cpp writes the output projection only when it is not the embedding matrix
        "tie_word_embeddings": "output.weight" not in shapes,
    }
    for name, key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                      ("pad_token_id", "padding_token_id")):
        value = meta.get(f"tokenizer.ggml.{key}")  # set even when absent: config classes default to
        cfg[name] = int(value) if value is not None else None  # their checkpoint's ids (Phi-3: 32000)
    scaling = rope_scaling(meta, head_dim=int(arch_key(meta, "rope.dimension_count", head_dim)))
    if scaling:
        cfg["rope_scaling"] = scaling
    return cfg


def rope_scaling(meta: dict[str, Any], head_dim: int) -> dict[str, Any] | None:
    """Hugging Face's ``rope_scaling`` from llama.cpp's ``rope.scaling.*`` keys and ``rope_freqs``."""
    kind = str(arch_key(meta, "rope.scaling.type", "none")).lower()
    factor = arch_key(meta, "rope.scaling.factor", None)
    if factor is None and arch_key(meta, "rope.scale_linear", None) is not None:  # older files
        kind, factor = "linear", arch_key(meta, "rope.scale_linear")
    original = arch_key(meta, "rope.scaling.original_context_length", None)
    small = meta.get("gguf.small_tensors", {})
    if "rope_freqs.weight" in small:  # Llama 3.x: frequency factors instead of parameters
        return llama3_rope_from_factors(small["rope_freqs.weight"], float(arch_key(meta, "rope.freq_base", 10000.0)),
                                        head_dim)
    if kind in ("none", "") or (kind == "linear" and float(factor or 1.0) == 1.0):
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(factor)}
    if kind == "yarn":
        out = {"rope_type": "yarn", "factor": float(factor)}
        if original is not None:
            out["original_max_position_embeddings"] = int(original)
        for gguf_key, hf_key in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow"),
                                 ("yarn_attn_factor", "attention_factor")):
            v = arch_key(meta, f"rope.scaling.{gguf_key}", None)
            if v is not None:
                out[hf_key] = float(v)
        return out
    if kind == "longrope":
        return None  # the family reads rope_factors_long/short itself (Phi-3)
    raise ModelLoadError(f"GGUF RoPE scaling '{kind}' is not supported (supported: none, linear, yarn, "
                         "longrope, Llama 3 frequency factors)")


def llama3_factors(params: dict[str, float], theta: float, dim: int) -> np.ndarray:
    """llama.cpp's ``rope_freqs`` for Llama 3 parameters (``convert_hf_to_gguf.py``)."""
    factor, low, high = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
    old = params["original_max_position_embeddings"]
    freqs = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    wavelen = 2 * math.pi / freqs
    smooth = (old / wavelen - low) / (high - low)
    mid = 1 / ((1 - smooth) / factor + smooth)
    return np.where(wavelen < old / high, 1.0, np.where(wavelen > old / low, factor, mid))


def llama3_rope_from_factors(ff: np.ndarray, theta: float, dim: int) -> dict[str, Any]:
    """Recover Llama 3 RoPE parameters from llama.cpp's per-frequency factors.

    The factors are 1 for short wavelengths, ``factor`` for long ones and, in between,
    ``1 / ((1 - s) / factor + s)`` with ``s = a / wavelen - b`` (``a = orig / (high - low)``,
    ``b = low / (high - low)``). Two in-between factors give ``a`` and ``b``; only their ratios
    matter, so ``low_freq_factor`` is set to Llama 3's 1. The result is checked by recomputing
    the factors; a file whose factors no parameters reproduce is refused.
    """
    ff = np.asarray(ff, dtype=np.float64).reshape(-1)
    factor = float(ff.max())
    wavelen = 2 * math.pi * theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    if ff.size != wavelen.size:
        raise ModelLoadError(f"GGUF rope_freqs has {ff.size} factors, expected {wavelen.size} (rotary dims / 2)")
    candidates = [{"factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192}]  # Llama 3.1 / 3.2 as published
    rel = np.isclose(ff, 1.0, rtol=1e-6) | np.isclose(ff, factor, rtol=1e-6)
    mid = np.flatnonzero(~rel)
    if mid.size >= 2 and factor > 1:
        s = (1.0 / ff[mid] - 1.0 / factor) / (1.0 - 1.0 / factor)  # the smoothing weight
        A = np.stack([1.0 / wavelen[mid], -np.ones(mid.size)], axis=1)
        (a, b), *_ = np.linalg.lstsq(A, s, rcond=None)
        if a > 0 and b > 0:
            candidates.append({"factor": factor, "low_freq_factor": 1.0, "high_freq_factor": (1 + b) / b,
                               "original_max_position_embeddings": a / b})
    if mid.size >= 1 and factor > 1:  # one point fixes a once high/low is Llama 3's 4 (b = 1/3)
        s0 = (1.0 / ff[mid[0]] - 1.0 / factor) / (1.0 - 1.0 / factor)
        a = (s0 + 1 / 3) * wavelen[mid[0]]
        candidates.append({"factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 3 * a})
    if mid.size == 0 and factor > 1:  # no smooth band: any thresholds in the gaps reproduce it
        short = wavelen[np.isclose(ff, 1.0, rtol=1e-6)]
        long_ = wavelen[np.isclose(ff, factor, rtol=1e-6)]
        lo_edge = short.max() if short.size else wavelen.min() / 2
        hi_edge = long_.min() if long_.size else wavelen.max() * 2
        cut = math.sqrt(lo_edge * hi_edge)
        candidates.append({"factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 1.0 + 1e-6,
                           "original_max_position_embeddings": cut})
    for p in candidates:
        if np.allclose(llama3_factors(p, theta, dim), ff, rtol=1e-5, atol=1e-6):
            return {"rope_type": "llama3", **p}
    raise ModelLoadError("GGUF rope_freqs do not follow Llama 3's RoPE scaling; edgeslm cannot express them")


def sliding_layers(meta: dict[str, Any], n_layers: int, default_period: int) -> list[bool]:
    """Which layers use the sliding window: ``attention.sliding_window_pattern`` when the file
    has it (a bool per layer, or a period), else llama.cpp's built-in period for the
    architecture (``set_swa_pattern(n)``: layer i slides unless ``i % n == n - 1``)."""
    pattern = arch_key(meta, "attention.sliding_window_pattern", None)
    if isinstance(pattern, (list, np.ndarray)):
        values = [bool(v) for v in np.asarray(pattern).reshape(-1)]
        if len(values) != n_layers:
            raise ModelLoadError(f"GGUF sliding_window_pattern has {len(values)} entries for {n_layers} layers")
        return values
    period = int(pattern) if pattern is not None else default_period
    return [period == 0 or (i % period) < period - 1 for i in range(n_layers)]


# -- tensor fixes --------------------------------------------------------------------------

def unpermute_qk(name: str, w: np.ndarray, cfg: dict[str, Any]) -> np.ndarray:
    """Undo llama.cpp's Q/K row order (interleaved rotary halves -> Hugging Face's halves).

    ``convert_hf_to_gguf.py`` (LlamaModel.permute): ``w.reshape(n_head, 2, rows // n_head // 2,
    ...).swapaxes(1, 2)``; the inverse swaps back. Applies to weights and biases.
    """
    if ".self_attn.q_proj." in name:
        heads = cfg["num_attention_heads"]
    elif ".self_attn.k_proj." in name:
        heads = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    else:
        return w
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_qk(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's Q/K row order, from Hugging Face's (the converter's direction; for tests)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gemma_norms(name: str, w: np.ndarray, cfg: dict[str, Any]) -> np.ndarray:
    """Gemma's RMSNorm scales by ``1 + w``; llama.cpp stores ``1 + w`` (its norm is plain), so
    every ``*norm.weight`` gets the 1 taken off again."""
    return w - np.float32(1.0) if name.endswith("norm.weight") else w
