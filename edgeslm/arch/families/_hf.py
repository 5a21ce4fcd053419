"""Reading Hugging Face config dicts: the parts families share (no torch)."""

from __future__ import annotations

from typing import Any

from ..config import AttentionConfig, BlockConfig, DecoderConfig, MLPConfig, NormConfig, RopeConfig

ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh",
               "gelu_new": "gelu_tanh", "gelu": "gelu"}
RESERVED = {"rope_type", "type", "rope_theta", "partial_rotary_factor"}


def activation(cfg: dict[str, Any]) -> str:
    name = cfg.get("hidden_activation") or cfg.get("hidden_act") or "silu"
    if name not in ACTIVATIONS:
        raise ValueError(f"activation '{name}' is not supported; supported: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]


def rope(cfg: dict[str, Any], layer_type: str | None = None, head_dim: int | None = None,
         theta_key: str = "rope_theta") -> RopeConfig:
    """RoPE of a layer type from transformers 5's ``rope_parameters`` (flat, or keyed by layer
    type as Gemma 3 has it) or from the older ``rope_theta`` + ``rope_scaling`` keys."""
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and layer_type in params and isinstance(params[layer_type], dict):
        params = params[layer_type]
    if not isinstance(params, dict):
        params = dict(cfg.get("rope_scaling") or {})
        params.setdefault("rope_theta", cfg.get(theta_key, 10000.0))
    params = dict(params)
    if "rope_theta" not in params:
        params["rope_theta"] = cfg.get(theta_key, 10000.0)
    kind = params.get("rope_type") or params.get("type") or "default"
    factor = params.get("partial_rotary_factor", cfg.get("partial_rotary_factor"))
    rotary_dim = int(head_dim * factor) if (factor and head_dim and factor != 1) else None
    rest = {k: v for k, v in params.items() if k not in RESERVED and v is not None}
    if kind in ("yarn", "longrope") and cfg.get("max_position_embeddings") and \
            rest.get("original_max_position_embeddings") is None and cfg.get("original_max_position_embeddings"):
        rest["original_max_position_embeddings"] = cfg["original_max_position_embeddings"]
    if kind == "longrope":
        rest.setdefault("max_position_embeddings", cfg.get("max_position_embeddings"))
    return RopeConfig(theta=float(params["rope_theta"]), scaling=kind, rotary_dim=rotary_dim, params=rest)


def head_dim(cfg: dict[str, Any]) -> int:
    return int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])


def layer_types(cfg: dict[str, Any]) -> list[str]:
    n = int(cfg["num_hidden_layers"])
    types = cfg.get("layer_types")
    return list(types) if types else ["full_attention"] * n


def llama_like(cfg: dict[str, Any], family: str, *, qkv_bias: bool | None = None, out_bias: bool | None = None,
               qk_norm: bool = False, sliding: bool = False, fused: bool = False) -> DecoderConfig:
    """Llama-shaped decoders (pre-norm, gated MLP, GQA): llama, mistral, qwen2, qwen3, phi3...
    Biases default to ``attention_bias``; ``sliding`` honours ``sliding_window`` (per
    ``layer_types`` when present, else on every layer); ``fused``: qkv_proj and gate_up_proj."""
    hd = head_dim(cfg)
    window = cfg.get("sliding_window") if sliding else None
    has_types = bool(cfg.get("layer_types"))
    default_bias = bool(cfg.get("attention_bias", False))
    blocks = []
    for kind in layer_types(cfg):
        w = window if (window and (kind == "sliding_attention" or not has_types)) else None
        att = AttentionConfig(
            num_heads=int(cfg["num_attention_heads"]),
            num_kv_heads=int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"]),
            head_dim=hd, qkv_bias=default_bias if qkv_bias is None else qkv_bias,
            out_bias=default_bias if out_bias is None else out_bias, fused_qkv=fused, qk_norm=qk_norm,
            sliding_window=int(w) if w else None, rope=rope(cfg, kind, hd))
        mlp = MLPConfig(intermediate_size=int(cfg["intermediate_size"]), activation=activation(cfg),
                        fused_gate_up=fused, bias=bool(cfg.get("mlp_bias", False)))
        blocks.append(BlockConfig(attention=att, mlp=mlp))
    return DecoderConfig(
        family=family, vocab_size=int(cfg["vocab_size"]), hidden_size=int(cfg["hidden_size"]), blocks=tuple(blocks),
        norm=NormConfig(eps=float(cfg.get("rms_norm_eps", 1e-6))),
        context_length=int(cfg.get("max_position_embeddings") or 2048),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)))
