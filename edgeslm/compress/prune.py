"""Pruning: unstructured magnitude pruning and structured (heads + MLP channels) pruning.

Structured pruning removes the same number of attention heads and MLP channels from every
layer, so the result is a standard, smaller model of the same family (fewer heads, smaller
intermediate size) that every exporter handles. Which weights hold a head or a channel comes
from the model's description (:mod:`.layout`): separate or fused (Phi-3) projections alike.
Grouped-query attention stays consistent: either query heads are removed uniformly inside each
KV group (the KV cache keeps its size), or whole KV groups with their query heads are removed
(the KV cache shrinks too). head_dim never changes, so
RoPE is untouched. Which heads/channels go is decided by their measured contribution on a
calibration text (mean |activation| x weight norm) or, without text, by weight norms alone.

Unstructured magnitude pruning zeroes the smallest weights of each linear layer. Shapes stay
the same: a dense file format stores the zeros, so the model only shrinks when compressed
(zip) or run by a sparse kernel; the report says so.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

from ..sources import SourceModel
from . import layout
from .model import count_parameters, derive

LINEAR_NAMES = layout.ALL_KINDS


@dataclass(frozen=True)
class MagnitudePruneConfig:
    sparsity: float = 0.5  # fraction of each linear layer's weights set to zero
    layers: tuple[str, ...] = LINEAR_NAMES  # which decoder linears (embedding/lm_head are kept)


@dataclass(frozen=True)
class StructuredPruneConfig:
    head_ratio: float = 0.3  # fraction of attention heads removed per layer (rounded, uniform)
    mlp_ratio: float = 0.3  # fraction of MLP channels removed per layer
    heads_mode: str = "query"  # "query": per KV group (cache unchanged) | "kv_group": whole groups
    multiple_of: int = 32  # kept MLP channels rounded to this (int4 block size, SIMD widths)
    calibration_tokens: int = 256  # tokens of calibration text scored through the model


def magnitude_prune(source: SourceModel, config: MagnitudePruneConfig = MagnitudePruneConfig()) -> SourceModel:
    """Zero the smallest-magnitude weights of each chosen linear layer (per-layer threshold)."""
    import torch

    if not 0.0 <= config.sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), not {config.sparsity}")
    module = copy.deepcopy(source.module)
    zeroed = total = 0
    with torch.no_grad():
        for name, lin in layout.dense_linears(module, source.spec.description, config.layers):
            w = lin.weight
            k = int(w.numel() * config.sparsity)
            if k == 0:
                continue
            threshold = w.abs().flatten().kthvalue(k).values
            mask = w.abs() > threshold
            w.mul_(mask)
            zeroed += int((~mask).sum())
            total += w.numel()
    step = {"technique": "magnitude_prune", **asdict(config), "sparsity_achieved": zeroed / max(total, 1)}
    return derive(source, module, step)


def _decoder_linears(module, kinds):
    import torch

    for name, sub in module.named_modules():
        if layout.kind(name) in layout.kinds(kinds) and isinstance(sub, torch.nn.Linear) and ".layers." in f".{name}":
            yield name, sub


def sparsity(module, kinds=LINEAR_NAMES) -> float:
    """Fraction of exactly-zero weights in the decoder's (dense) linear layers."""
    zeros = total = 0
    for _, lin in _decoder_linears(module, kinds):
        zeros += int((lin.weight == 0).sum())
        total += lin.weight.numel()
    return zeros / max(total, 1)


# -- structured --------------------------------------------------------------------------------
def structured_prune(source: SourceModel, config: StructuredPruneConfig = StructuredPruneConfig(),
                     calibration_text: str | None = None) -> SourceModel:
    """Remove heads and MLP channels uniformly per layer; returns a smaller model of the same family."""
    spec = source.spec
    for what, ratio in (("heads", config.head_ratio), ("MLP channels", config.mlp_ratio)):
        if not 0 <= ratio < 1:
            raise ValueError(f"the fraction of {what} to remove must be in [0, 1), not {ratio}")
    if config.heads_mode not in ("query", "kv_group"):
        raise ValueError(f"heads_mode must be 'query' or 'kv_group', not {config.heads_mode!r}")
    group = spec.num_heads // spec.num_kv_heads
    if config.heads_mode == "query":
        keep_group = max(1, group - round(group * config.head_ratio))
        new_kv, new_heads = spec.num_kv_heads, keep_group * spec.num_kv_heads
    else:
        new_kv = max(1, spec.num_kv_heads - round(spec.num_kv_heads * config.head_ratio))
        keep_group, new_heads = group, new_kv * group
    keep_mlp = spec.intermediate_size - round(spec.intermediate_size * config.mlp_ratio)
    if config.multiple_of > 1:
        keep_mlp = max(config.multiple_of, round(keep_mlp / config.multiple_of) * config.multiple_of)
    keep_mlp = min(keep_mlp, spec.intermediate_size)

    desc = spec.description
    for what in ("num_heads", "num_kv_heads", "head_dim"):
        desc.uniform(what)  # one count per model in config.json: refuse per-layer shapes by name
    if len({b.mlp.intermediate_size for b in desc.blocks}) != 1:
        raise ValueError("structured pruning needs one MLP width for every layer")
    layout.refuse_factorized(source.module, desc, "structured pruning")
    head_scores, channel_scores = importance_scores(source, calibration_text, config.calibration_tokens)
    module = source.module
    sd = {k: v.clone() for k, v in module.state_dict().items()}
    for i in range(desc.num_layers):
        # attention: choose heads; scores (num_heads,) -> kept head indices, grouped by KV head
        hs = head_scores[i].view(spec.num_kv_heads, group)  # (kv, group)
        if config.heads_mode == "query":
            kv_keep = list(range(spec.num_kv_heads))
            q_keep = [g * group + j for g in kv_keep
                      for j in sorted(hs[g].topk(keep_group).indices.tolist())]
        else:
            kv_keep = sorted(hs.sum(1).topk(new_kv).indices.tolist())
            q_keep = [g * group + j for g in kv_keep for j in range(group)]
        layout.slice_heads(sd, f"model.layers.{i}.", desc.blocks[i], q_keep, kv_keep)
        # MLP: keep the highest-scoring channels, in their original order
        ch = sorted(channel_scores[i].topk(keep_mlp).indices.tolist())
        layout.slice_channels(sd, f"model.layers.{i}.", desc.blocks[i], ch)

    config_dict = module.config.to_dict()
    config_dict.update(num_attention_heads=new_heads, num_key_value_heads=new_kv, head_dim=spec.head_dim,
                       intermediate_size=keep_mlp)
    new = _build_like(module, config_dict, sd)
    step = {"technique": "structured_prune", **asdict(config),
            "heads": [spec.num_heads, new_heads], "kv_heads": [spec.num_kv_heads, new_kv],
            "intermediate_size": [spec.intermediate_size, keep_mlp],
            "parameters": [count_parameters(module), count_parameters(new)],
            "scored_on": "calibration text" if calibration_text != "" else "weight norms"}
    return derive(source, new, step)


def _build_like(module, config_dict: dict, state_dict: dict):
    """A fresh transformers model of ``module``'s class from a modified config, then its weights."""
    import torch

    config = type(module.config).from_dict(config_dict)
    new = type(module)(config).to(torch.float32)
    if config.tie_word_embeddings:
        state_dict = {k: v for k, v in state_dict.items() if k != "lm_head.weight"}
    missing, unexpected = new.load_state_dict(state_dict, strict=False)
    missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"pruned weights do not fit the new config: {missing[:5]} {unexpected[:5]}")
    if config.tie_word_embeddings:
        new.tie_weights()
    return new.eval()


def importance_scores(source: SourceModel, calibration_text: str | None = None, max_tokens: int = 256):
    """Per layer: head scores (num_heads,) and MLP channel scores (intermediate,).

    With calibration text (the default: built-in text; "" = none) a channel's score is
    mean |activation| over the text x the norm of the weights it writes with (down_proj
    column); a head's score is the mean norm of its attention output x its o_proj block's norm.
    Without text: weight norms only.
    """
    import torch

    from .data import CALIBRATION_TEXT

    spec, module = source.spec, source.module
    desc = spec.description
    hd = spec.head_dim
    acts: dict[str, list] = {}
    hooks = []
    text = CALIBRATION_TEXT if calibration_text is None else calibration_text
    if text:
        def hook(name):
            def fn(mod, args):
                x = args[0].detach()  # (batch, seq, features)
                acts.setdefault(name, []).append(x.reshape(-1, x.shape[-1]))
            return fn

        for i, layer in enumerate(module.model.layers):
            hooks.append(layer.mlp.down_proj.register_forward_pre_hook(hook(f"mlp{i}")))
            hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(hook(f"attn{i}")))
        ids = source.tokenizer.encode(text)[:max_tokens]
        try:
            with torch.no_grad():
                module(torch.tensor([ids]))
        finally:
            for h in hooks:
                h.remove()
    heads, channels = [], []
    for i, layer in enumerate(module.model.layers):
        down = layer.mlp.down_proj.weight.detach()  # (hidden, intermediate)
        o = layer.self_attn.o_proj.weight.detach()  # (hidden, heads*hd)
        o_norm = o.view(o.shape[0], spec.num_heads, hd).norm(dim=(0, 2))  # (heads,)
        if text:
            a = torch.cat(acts[f"mlp{i}"])  # (tokens, intermediate)
            channels.append(a.abs().mean(0) * down.norm(dim=0))
            h = torch.cat(acts[f"attn{i}"]).view(-1, spec.num_heads, hd)  # (tokens, heads, hd)
            heads.append(h.norm(dim=-1).mean(0) * o_norm)
        else:
            channels.append(_channel_read_norm(layer.mlp, desc.blocks[i].mlp) * down.norm(dim=0))
            a = desc.blocks[i].attention
            q = layer.self_attn.qkv_proj.weight if a.fused_qkv else layer.self_attn.q_proj.weight
            q = q.detach()[: a.num_heads * hd].view(a.num_heads, hd, -1)  # (heads, hd, hidden)
            heads.append(q.norm(dim=(1, 2)) * o_norm)
    return heads, channels


def _channel_read_norm(mlp, cfg):
    """Per channel, the norm of the rows that read it in (gate x up, fused or not; up if ungated)."""
    i = cfg.intermediate_size
    if cfg.fused_gate_up:
        w = mlp.gate_up_proj.weight.detach()  # (2 * inter, hidden): gate rows, then up rows
        return w[:i].norm(dim=1) * w[i:].norm(dim=1)
    up = mlp.up_proj.weight.detach().norm(dim=1)
    return mlp.gate_proj.weight.detach().norm(dim=1) * up if cfg.gated else up


def expected_parameters(spec, config: StructuredPruneConfig) -> int:
    """Parameter count structured pruning will leave (for tests and dry runs)."""
    import dataclasses

    group = spec.num_heads // spec.num_kv_heads
    if config.heads_mode == "query":
        kv, heads = spec.num_kv_heads, max(1, group - round(group * config.head_ratio)) * spec.num_kv_heads
    else:
        kv = max(1, spec.num_kv_heads - round(spec.num_kv_heads * config.head_ratio))
        heads = kv * group
    inter = spec.intermediate_size - round(spec.intermediate_size * config.mlp_ratio)
    if config.multiple_of > 1:
        inter = max(config.multiple_of, round(inter / config.multiple_of) * config.multiple_of)
    inter = min(inter, spec.intermediate_size)
    desc = spec.description
    blocks = [dataclasses.replace(b, attention=dataclasses.replace(b.attention, num_heads=heads, num_kv_heads=kv),
                                  mlp=dataclasses.replace(b.mlp, intermediate_size=inter)) for b in desc.blocks]
    return desc.with_blocks(blocks).num_parameters(spec.extra.get("low_rank") or {})


