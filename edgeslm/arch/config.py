"""The decoder description: what a decoder-only transformer is, as data (no torch).

A family (``edgeslm/arch/families/``) maps a Hugging Face config or GGUF metadata to a
:class:`DecoderConfig`; one torch implementation (:mod:`edgeslm.arch.decoder`) reads it, and
``fit``, parameter counts and KV-cache sizes are computed from it. The description is stored in
every bundle manifest (``spec.decoder``), so a device knows what it runs without torch.

Every per-layer fact lives in :class:`BlockConfig` (in the spirit of litert-torch's
``ModelConfig.block_configs``): Gemma 3 alternates sliding-window and global layers with two
RoPE bases, so "the" head count, window or RoPE of a model is a per-layer question.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class RopeConfig:
    """Rotary position embedding of one layer type.

    ``scaling``: ``"default"`` | ``"linear"`` | ``"llama3"`` | ``"yarn"`` | ``"longrope"`` | ``"none"``
    (no rotation, e.g. SmolLM3's NoPE layers); ``params`` holds that scaling's numbers under
    Hugging Face's names (``factor``, ``low_freq_factor``, ``original_max_position_embeddings``...).
    ``rotary_dim`` < head_dim rotates only the first dims (Phi-4-mini's partial rotary).
    """

    theta: float = 10000.0
    scaling: str = "default"
    rotary_dim: int | None = None  # None: the whole head
    params: dict[str, Any] = field(default_factory=dict)

    def __hash__(self) -> int:  # params is a dict; rope configs are grouped by value
        return hash((self.theta, self.scaling, self.rotary_dim, repr(sorted(self.params.items()))))


@dataclass(frozen=True)
class NormConfig:
    """RMSNorm; ``offset`` 1.0 means the weight is applied as ``(1 + w)`` (Gemma)."""

    eps: float = 1e-5
    offset: float = 0.0


@dataclass(frozen=True)
class AttentionConfig:
    num_heads: int
    num_kv_heads: int
    head_dim: int
    qkv_bias: bool = False
    out_bias: bool = False
    fused_qkv: bool = False  # one qkv_proj (Phi-3) instead of q_proj/k_proj/v_proj
    qk_norm: bool = False  # RMSNorm over each head's q and k (Qwen3, Gemma 3)
    scale: float | None = None  # None: head_dim ** -0.5; Gemma: query_pre_attn_scalar ** -0.5
    logit_softcap: float | None = None  # tanh soft-capping of attention scores (Gemma 2)
    sliding_window: int | None = None  # a query sees the last `sliding_window` positions (itself included)
    rope: RopeConfig = field(default_factory=RopeConfig)


@dataclass(frozen=True)
class MLPConfig:
    intermediate_size: int
    activation: str = "silu"  # "silu" | "gelu_tanh" | "gelu"
    gated: bool = True  # down(act(gate(x)) * up(x)); ungated: down(act(up(x)))
    fused_gate_up: bool = False  # one gate_up_proj (Phi-3), gate first
    bias: bool = False


@dataclass(frozen=True)
class BlockConfig:
    """One decoder layer. ``norms`` maps a role to the layer's attribute (= weight) name:
    ``attn_pre``/``mlp_pre`` always; ``attn_post``/``mlp_post`` for sandwich norms (Gemma)."""

    attention: AttentionConfig
    mlp: MLPConfig
    norms: dict[str, str] = field(default_factory=lambda: {"attn_pre": "input_layernorm",
                                                           "mlp_pre": "post_attention_layernorm"})

    @property
    def is_sliding(self) -> bool:
        return self.attention.sliding_window is not None


@dataclass(frozen=True)
class DecoderConfig:
    family: str  # the key into edgeslm.arch.families' registry
    vocab_size: int
    hidden_size: int
    blocks: tuple[BlockConfig, ...]
    norm: NormConfig = field(default_factory=NormConfig)
    context_length: int = 2048  # the longest context the model was trained for
    embed_scale: float | None = None  # multiply embeddings by this (Gemma: sqrt(hidden))
    final_logit_softcap: float | None = None
    tie_word_embeddings: bool = False
    lm_head_bias: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # family facts the math does not read

    # -- sizes ------------------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def linear_shape(self, layer: int, name: str) -> tuple[int, int]:
        """(in, out) features of the linear ``name`` (e.g. ``self_attn.q_proj``) of a layer."""
        b, hs = self.blocks[layer], self.hidden_size
        a, m = b.attention, b.mlp
        q, kv = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
        shapes = {"self_attn.q_proj": (hs, q), "self_attn.k_proj": (hs, kv), "self_attn.v_proj": (hs, kv),
                  "self_attn.qkv_proj": (hs, q + 2 * kv), "self_attn.o_proj": (q, hs),
                  "mlp.gate_proj": (hs, m.intermediate_size), "mlp.up_proj": (hs, m.intermediate_size),
                  "mlp.gate_up_proj": (hs, 2 * m.intermediate_size), "mlp.down_proj": (m.intermediate_size, hs)}
        return shapes[name]

    def linear_names(self, layer: int) -> list[str]:
        """The layer's linear weights, relative to ``model.layers.{layer}``."""
        b = self.blocks[layer]
        attn = ["self_attn.qkv_proj"] if b.attention.fused_qkv else \
            ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
        if b.mlp.fused_gate_up:
            mlp = ["mlp.gate_up_proj"]
        else:
            mlp = ["mlp.gate_proj", "mlp.up_proj"] if b.mlp.gated else ["mlp.up_proj"]
        return attn + ["self_attn.o_proj"] + mlp + ["mlp.down_proj"]

    def num_parameters(self, low_rank: dict[str, int] | None = None) -> int:
        """Parameters (a tied head counted once); ``low_rank`` maps full linear names
        (``model.layers.0.mlp.up_proj``) to a rank: rank * (in + out) instead of in * out."""
        hs, total = self.hidden_size, self.vocab_size * self.hidden_size + self.hidden_size
        if not self.tie_word_embeddings:
            total += self.vocab_size * hs + (self.vocab_size if self.lm_head_bias else 0)
        low_rank = low_rank or {}
        for i, b in enumerate(self.blocks):
            a = b.attention
            for name in self.linear_names(i):
                fan_in, fan_out = self.linear_shape(i, name)
                rank = low_rank.get(f"model.layers.{i}.{name}")
                total += int(rank) * (fan_in + fan_out) if rank else fan_in * fan_out
            if a.qkv_bias:
                total += (a.num_heads + 2 * a.num_kv_heads) * a.head_dim
            total += hs if a.out_bias else 0
            if b.mlp.bias:
                total += b.mlp.intermediate_size * (2 if b.mlp.gated else 1) + hs
            total += len(b.norms) * hs + (2 * a.head_dim if a.qk_norm else 0)
        return total

    def kv_cache_bytes(self, tokens: int, bytes_per_value: float = 4.0, windowed: bool = False) -> int:
        """K and V bytes for a context of ``tokens``, as edgeslm's exports hold them: every layer
        keeps the whole context (one past length for the ONNX/OpenVINO engines, fixed slots in
        LiteRT, one state tensor in Core ML; sliding layers mask what is outside their window).
        ``windowed``: the least a runtime needs that keeps only each sliding layer's window."""
        total = 0.0
        for b in self.blocks:
            a = b.attention
            held = min(tokens, a.sliding_window) if (windowed and a.sliding_window) else tokens
            total += 2 * a.num_kv_heads * a.head_dim * held * bytes_per_value
        return int(total)

    def uniform(self, what: str):
        """The value of an attention attribute that every layer shares (e.g. ``num_kv_heads``),
        or ValueError naming the layers that differ."""
        values = {getattr(b.attention, what) for b in self.blocks}
        if len(values) != 1:
            raise ValueError(f"'{what}' differs between layers: {sorted(values, key=repr)}")
        return values.pop()

    def with_blocks(self, blocks) -> "DecoderConfig":
        return replace(self, blocks=tuple(blocks))

    # -- serialization ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; runs of identical blocks are stored once with their layer count."""
        d = asdict(self)
        runs: list[dict[str, Any]] = []
        for b in d.pop("blocks"):
            if runs and runs[-1]["block"] == b:
                runs[-1]["repeat"] += 1
            else:
                runs.append({"block": b, "repeat": 1})
        d["blocks"] = runs
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DecoderConfig":
        d = dict(d)
        blocks = []
        for run in d.pop("blocks"):
            b = dict(run["block"])
            att = dict(b["attention"])
            att["rope"] = RopeConfig(**att.get("rope", {}))
            block = BlockConfig(attention=AttentionConfig(**att), mlp=MLPConfig(**b["mlp"]), norms=dict(b["norms"]))
            blocks += [block] * int(run.get("repeat", 1))
        d["norm"] = NormConfig(**d.get("norm", {}))
        known = set(cls.__dataclass_fields__)
        return cls(blocks=tuple(blocks), **{k: v for k, v in d.items() if k in known})
