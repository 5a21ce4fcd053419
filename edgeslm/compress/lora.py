"""LoRA fine-tuning with peft on chat examples, merged back into plain weights.

Each example is rendered with the model's own chat template; loss is taken on the last
message (the assistant's answer) only. After training the adapters are merged
(``W + B A * alpha / r``) and unloaded, so the result is the same standard transformers model
with new weights: it exports like any other. Needs ``pip install 'edgeslm[compress]'`` (peft).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from typing import Sequence

from .._deps import require
from ..sources import SourceModel
from . import layout
from .distill import _progress
from .model import derive


@dataclass(frozen=True)
class LoraConfig:
    rank: int = 8  # r: adapter rank
    alpha: int = 16  # scaling numerator (alpha / r)
    dropout: float = 0.0
    # layer kinds or groups ("attention", "mlp"); fused qkv_proj / gate_up_proj (Phi-3) included
    targets: tuple[str, ...] = layout.ALL_KINDS
    steps: int = 60  # optimizer steps
    batch_size: int = 4
    lr: float = 2e-4  # AdamW
    max_len: int = 256  # tokens per example (longer ones are cut)
    seed: int = 0


def encode_chat(source: SourceModel, messages: list[dict], max_len: int) -> tuple[list[int], list[int]]:
    """(token ids, labels): labels are -100 except on the last message's tokens."""
    tok = source.tokenizer
    prefix = tok.apply_chat_template(messages[:-1], add_generation_prompt=True) if len(messages) > 1 else ""
    full = tok.apply_chat_template(messages, add_generation_prompt=False)
    ids = tok.encode(full)[:max_len]
    n_prefix = len(tok.encode(prefix)) if prefix else 0
    labels = [-100] * min(n_prefix, len(ids)) + ids[n_prefix:]
    return ids, labels


def add_adapters(module, config: LoraConfig):
    """A peft model wrapping a *copy* of ``module`` with fresh LoRA adapters."""
    import torch

    peft = require("peft", "compress", "LoRA fine-tuning")
    module = copy.deepcopy(module)
    # Full names of the nn.Linear layers to adapt; a low-rank factorized layer is adapted in
    # both of its factors (peft knows nn.Linear, not our LowRankLinear pair).
    targets = set(layout.kinds(config.targets))
    names = [n for n, m in module.named_modules()
             if isinstance(m, torch.nn.Linear) and ".layers." in n
             and (n.rsplit(".", 1)[-1] in targets
                  or (n.rsplit(".", 1)[-1] in ("down", "up") and n.rsplit(".", 2)[-2] in targets))]
    if not names:
        raise ValueError(f"no linear layer matches the LoRA targets {config.targets}")
    cfg = peft.LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                          target_modules=names, bias="none", task_type="CAUSAL_LM")
    return peft.get_peft_model(module, cfg)


def lora_finetune(source: SourceModel, examples: Sequence[list[dict]], config: LoraConfig = LoraConfig(),
                  progress: bool = True, return_adapter_model: bool = False):
    """Train LoRA adapters on chat ``examples`` and merge them; returns the merged SourceModel
    (and, with ``return_adapter_model``, the unmerged peft model too, for checks)."""
    import torch

    torch.manual_seed(config.seed)
    encoded = [encode_chat(source, m, config.max_len) for m in examples]
    encoded = [e for e in encoded if any(x != -100 for x in e[1][1:])]
    if not encoded:
        raise ValueError("no example has trainable (assistant) tokens within max_len")
    pad = source.spec.eos_token_ids[0] if source.spec.eos_token_ids else 0
    model = add_adapters(source.module, config)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    losses = []
    t0 = time.perf_counter()
    bar = _progress(progress, config.steps)
    with bar:
        task = bar.add_task("fine-tuning (LoRA)", total=config.steps, loss=float("nan"))
        for _ in range(config.steps):
            pick = torch.randint(len(encoded), (min(config.batch_size, len(encoded)),), generator=gen).tolist()
            batch = [encoded[i] for i in pick]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in batch])  # (batch, width)
            labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
            mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in batch])
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            bar.update(task, advance=1, loss=losses[-1])
    model.eval()
    adapter_model = model
    merged = copy.deepcopy(model).merge_and_unload() if return_adapter_model else model.merge_and_unload()
    merged.eval()
    step = {"technique": "lora", **asdict(config), "examples": len(encoded), "loss_first": losses[0],
            "loss_last": losses[-1], "seconds": round(time.perf_counter() - t0, 1)}
    out = derive(source, merged, step)
    return (out, adapter_model) if return_adapter_model else out
