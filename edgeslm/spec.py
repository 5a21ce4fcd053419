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

    # The full decoder description (edgeslm.arch.config.DecoderConfig.to_dict()); the fields above
    # are its layer-0 summary. Bundles written before the description existed lack it: then a
    # Llama-shaped description is derived from the fields.
    decoder: dict[str, Any] | None = None

    @classmethod
    def from_decoder(cls, desc, **fields: Any) -> "ModelSpec":
        """A spec whose shape fields summarize ``desc`` (a DecoderConfig); ``fields`` add the
        tokenizer facts (bos/eos ids, chat template) and the name."""
        a, m = desc.blocks[0].attention, desc.blocks[0].mlp
        return cls(architecture=desc.family, vocab_size=desc.vocab_size, hidden_size=desc.hidden_size,
                   num_layers=desc.num_layers, num_heads=a.num_heads, num_kv_heads=a.num_kv_heads,
                   head_dim=a.head_dim, intermediate_size=m.intermediate_size, context_length=desc.context_length,
                   rope_theta=a.rope.theta, rms_norm_eps=desc.norm.eps, tie_word_embeddings=desc.tie_word_embeddings,
                   decoder=desc.to_dict(), **fields)

    @property
    def description(self):
        """The :class:`~edgeslm.arch.config.DecoderConfig` (torch-free)."""
        from .arch.config import (AttentionConfig, BlockConfig, DecoderConfig, MLPConfig, NormConfig,
                                  RopeConfig)

        if self.decoder:
            return DecoderConfig.from_dict(self.decoder)
        att = AttentionConfig(num_heads=self.num_heads, num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
                              qkv_bias=self.architecture == "qwen2", rope=RopeConfig(theta=self.rope_theta))
        block = BlockConfig(attention=att, mlp=MLPConfig(intermediate_size=self.intermediate_size))
        return DecoderConfig(family=self.architecture, vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                             blocks=(block,) * self.num_layers, norm=NormConfig(eps=self.rms_norm_eps),
                             context_length=self.context_length, tie_word_embeddings=self.tie_word_embeddings)

    @property
    def num_parameters(self) -> int:
        """Parameter count (tied head counted once; low-rank factorized layers as their factors)."""
        return self.description.num_parameters(self.extra.get("low_rank") or {})

    def linear_shape(self, name: str) -> tuple[int, int]:
        """(in, out) features of a decoder linear layer: ``model.layers.3.mlp.up_proj``."""
        parts = name.split(".")
        if len(parts) >= 4 and parts[0] == "model" and parts[1] == "layers":
            return self.description.linear_shape(int(parts[2]), ".".join(parts[3:]))
        raise ValueError(f"not a decoder linear layer name: '{name}'")

    def kv_cache_bytes(self, tokens: int, bytes_per_value: float = 4.0) -> int:
        """Bytes of K and V for a context of ``tokens`` as the exported bundle holds them (see
        :meth:`~edgeslm.arch.config.DecoderConfig.kv_cache_bytes`)."""
        return self.description.kv_cache_bytes(tokens, bytes_per_value)

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
