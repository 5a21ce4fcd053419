"""ModelSpec: the architecture facts every stage needs, independent of any framework."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    """Shape and vocabulary facts of a decoder-only language model.

    Exporters size KV caches from it, targets forecast memory from it, and it is stored in
    every bundle manifest so a device knows what it runs without torch.
    """

    architecture: str  # "llama"; the key into edgeslm.arch's registry
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int  # < num_heads means grouped-query attention (SmolLM2: 9 heads, 3 kv)
    head_dim: int
    intermediate_size: int
    context_length: int  # the longest context the model was trained for
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()  # every id that ends a turn
    chat_template: str | None = None  # Jinja, as Hugging Face and GGUF files carry it
    name: str = ""  # human-readable model name
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_parameters(self) -> int:
        """Parameter count of a Llama-shaped model with these sizes (tied head counted once)."""
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        q = h * self.num_heads * self.head_dim
        kv = 2 * h * self.num_kv_heads * self.head_dim
        o = self.num_heads * self.head_dim * h
        per_layer = q + kv + o + 3 * h * i + 2 * h
        head = 0 if self.tie_word_embeddings else v * h
        dense = v * h + self.num_layers * per_layer + h + head
        # Low-rank factorized layers (edgeslm.compress.lowrank): rank * (in + out) instead of in * out.
        for name, rank in (self.extra.get("low_rank") or {}).items():
            fan_in, fan_out = self.linear_shape(name)
            dense += int(rank) * (fan_in + fan_out) - fan_in * fan_out
        return dense

    def linear_shape(self, name: str) -> tuple[int, int]:
        """(in, out) features of a decoder linear layer named like Hugging Face's Llama."""
        h, i = self.hidden_size, self.intermediate_size
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        shapes = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                  "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
        return shapes[name.rsplit(".", 1)[-1]]

    def kv_cache_bytes(self, tokens: int, bytes_per_value: float = 4.0) -> int:
        """Bytes of K and V for ``tokens`` positions: layers x kv heads x head dim x 2 x bytes."""
        return int(self.num_layers * self.num_kv_heads * self.head_dim * 2 * bytes_per_value * tokens)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["eos_token_ids"] = list(self.eos_token_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        d = dict(d)
        d["eos_token_ids"] = tuple(d.get("eos_token_ids") or ())
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})
