"""Where a decoder's weights live, read from its description: no family key names elsewhere.

Every technique asks the model's :class:`~edgeslm.arch.config.DecoderConfig` (``spec.description``)
which linears a layer has (``linear_names``: ``q_proj``/``k_proj``/``v_proj`` or one fused
``qkv_proj``; ``gate_proj``+``up_proj``, one fused ``gate_up_proj``, or an ungated ``up_proj``),
their shapes (``linear_shape``) and which norms it has (``BlockConfig.norms``: pre-norms, and
Gemma's sandwich post-norms). The slicing helpers below cut a Hugging Face-named state dict
along heads, MLP channels or hidden dimensions for any of those layouts, fused ones included.

Norm weights are sliced, never rescaled: a Gemma ``(1 + w)`` norm stores ``w`` and slicing
``w`` slices ``1 + w`` alike, so the offset needs no special case; it would if a technique
folded a norm into the next linear (none does).
"""

from __future__ import annotations

from typing import Iterator

#: Linears that read the layer's hidden state (their input columns are hidden dims) ...
READS_HIDDEN = ("q_proj", "k_proj", "v_proj", "qkv_proj", "gate_proj", "up_proj", "gate_up_proj")
#: ... and those that write it (their output rows are hidden dims).
WRITES_HIDDEN = ("o_proj", "down_proj")
#: Target groups accepted wherever a technique takes layer kinds.
GROUPS = {"mlp": ("gate_proj", "up_proj", "gate_up_proj", "down_proj"),
          "attention": ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj")}
ALL_KINDS = GROUPS["attention"] + GROUPS["mlp"]


def kinds(targets) -> tuple[str, ...]:
    """Layer kinds (``down_proj``...) from targets that may name groups (``"mlp"``, ``"attention"``)."""
    out: list[str] = []
    for t in targets:
        out += GROUPS.get(t, (t,))
    return tuple(out)


def kind(name: str) -> str:
    """``model.layers.3.self_attn.q_proj`` -> ``q_proj``."""
    return name.rsplit(".", 1)[-1]


def linear_names(desc, targets=ALL_KINDS) -> list[str]:
    """Full names (``model.layers.{i}.mlp.down_proj``) of the decoder linears of the chosen kinds."""
    wanted = set(kinds(targets))
    return [f"model.layers.{i}.{n}" for i in range(desc.num_layers) for n in desc.linear_names(i)
            if kind(n) in wanted]


def dense_linears(module, desc, targets=ALL_KINDS) -> Iterator[tuple[str, object]]:
    """(name, nn.Linear) for the chosen decoder linears that are dense (factorized pairs skipped)."""
    import torch

    for name in linear_names(desc, targets):
        lin = module.get_submodule(name)
        if isinstance(lin, torch.nn.Linear):
            yield name, lin


def refuse_factorized(module, desc, what: str) -> None:
    """ValueError when a decoder linear is a low-rank pair: its rows/columns cannot be cut alike."""
    import torch

    for name in linear_names(desc):
        if not isinstance(module.get_submodule(name), torch.nn.Linear):
            raise ValueError(f"{what} cannot cut the factorized layer '{name}'; apply it before low-rank "
                             "factorization")


def _rows(index: list[int], width: int) -> list[int]:
    """Row indices of whole blocks of ``width`` (a head's rows: head * head_dim + d)."""
    return [i * width + d for i in index for d in range(width)]


def slice_heads(sd: dict, prefix: str, block, q_heads: list[int], kv_heads: list[int]) -> None:
    """Keep query heads ``q_heads`` and KV heads ``kv_heads`` of one layer (``prefix`` =
    ``model.layers.{i}.``): q/k/v (or fused qkv) rows, their biases, o_proj columns. q/k norms
    act per head_dim and stay."""
    a = block.attention
    hd = a.head_dim
    q_rows, kv_rows = _rows(q_heads, hd), _rows(kv_heads, hd)
    p = prefix + "self_attn."
    if a.fused_qkv:  # rows: [q (h*hd) | k (kv*hd) | v (kv*hd)]
        q_end, k_end = a.num_heads * hd, (a.num_heads + a.num_kv_heads) * hd
        rows = q_rows + [q_end + r for r in kv_rows] + [k_end + r for r in kv_rows]
        _cut_rows(sd, p + "qkv_proj", rows)
    else:
        _cut_rows(sd, p + "q_proj", q_rows)
        _cut_rows(sd, p + "k_proj", kv_rows)
        _cut_rows(sd, p + "v_proj", kv_rows)
    sd[p + "o_proj.weight"] = sd[p + "o_proj.weight"][:, q_rows]  # (hidden, kept*hd)


def slice_channels(sd: dict, prefix: str, block, channels: list[int]) -> None:
    """Keep MLP channels ``channels`` of one layer: gate/up (or fused gate_up) rows, down columns."""
    m = block.mlp
    p = prefix + "mlp."
    if m.fused_gate_up:  # rows: [gate (I) | up (I)]
        _cut_rows(sd, p + "gate_up_proj", list(channels) + [m.intermediate_size + c for c in channels])
    else:
        for name in (("gate_proj", "up_proj") if m.gated else ("up_proj",)):
            _cut_rows(sd, p + name, channels)
    sd[p + "down_proj.weight"] = sd[p + "down_proj.weight"][:, channels]  # (hidden, kept)


def slice_hidden(sd: dict, prefix: str, desc, layer: int, hidden: list[int], out_prefix: str | None = None) -> dict:
    """The layer's weights with only hidden dims ``hidden`` kept (input columns of the linears
    that read the residual stream, output rows of those that write it, every norm of the block);
    returned under ``out_prefix`` (renumbered layers)."""
    block = desc.blocks[layer]
    out_prefix = prefix if out_prefix is None else out_prefix
    out = {}
    for name in desc.linear_names(layer):
        w, b = sd[f"{prefix}{name}.weight"], sd.get(f"{prefix}{name}.bias")
        if kind(name) in READS_HIDDEN:
            w = w[:, hidden]  # (out, kept hidden)
        else:
            w, b = w[hidden], (b[hidden] if b is not None else None)  # (kept hidden, in)
        out[f"{out_prefix}{name}.weight"] = w
        if b is not None:
            out[f"{out_prefix}{name}.bias"] = b
    for attr in block.norms.values():  # pre-norms and (Gemma) sandwich post-norms
        out[f"{out_prefix}{attr}.weight"] = sd[f"{prefix}{attr}.weight"][hidden]
    if block.attention.qk_norm:  # per head_dim: unchanged
        for n in ("self_attn.q_norm.weight", "self_attn.k_norm.weight"):
            out[out_prefix + n] = sd[prefix + n]
    return out


def _cut_rows(sd: dict, name: str, rows: list[int]) -> None:
    sd[name + ".weight"] = sd[name + ".weight"][rows]  # (kept, in)
    if name + ".bias" in sd:
        sd[name + ".bias"] = sd[name + ".bias"][rows]


def layer_config_updates(cfg: dict, layers: list[int]) -> dict:
    """config.json keys that list one value per layer (``layer_types``: Gemma's sliding/global,
    Qwen's and Mistral's sliding layers), restricted to the kept ``layers``."""
    out = {}
    for key in ("layer_types",):
        if isinstance(cfg.get(key), list) and len(cfg[key]) >= len(layers):
            out[key] = [cfg[key][i] for i in layers]
    return out
