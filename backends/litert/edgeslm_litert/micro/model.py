"""The micro model: a fixed-window character MLP language model (Bengio et al. 2003 style).

It uses only FULLY_CONNECTED and RESHAPE, the ops int8 quantization handles best and every
TFLite Micro port has. The input is the one-hot window, so the graph's input is int8 too::

    onehot  (1, N, V)   one row per character of the window, oldest first
 -> emb     (1, N, E)   Linear(V, E, bias=False) over the one-hot rows == an embedding lookup
 -> flat    (1, N*E)
 -> relu(fc1) (1, H) -> relu(fc2) (1, H) -> out (1, V) next-character logits
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

UNK = 0  # id of characters outside the vocabulary (shown as '?')


@dataclass
class CharVocab:
    """Single-byte characters (ASCII), id 0 = unknown. Bytes, so the C side needs no UTF-8."""

    chars: str  # chars[i] is the character of id i (chars[0] == '?')

    @classmethod
    def from_text(cls, text: str, max_size: int = 96) -> "CharVocab":
        counts = Counter(c for c in text if c == "\n" or 32 <= ord(c) < 127)
        keep = [c for c, _ in counts.most_common(max_size - 1) if c != "?"]
        return cls("?" + "".join(sorted(keep)))

    @property
    def size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.chars)}
        return np.array([index.get(c, UNK) for c in text], dtype=np.int64)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def make_module(vocab: int, context: int, embed: int, hidden: int):
    import torch
    from torch import nn

    class MicroLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.context, self.vocab = context, vocab
            self.emb = nn.Linear(vocab, embed, bias=False)
            self.fc1 = nn.Linear(context * embed, hidden)
            self.fc2 = nn.Linear(hidden, hidden)
            self.out = nn.Linear(hidden, vocab)

        def forward(self, onehot: torch.Tensor) -> torch.Tensor:  # (B, N, V) -> (B, V)
            x = self.emb(onehot).reshape(onehot.shape[0], -1)  # (B, N*E)
            return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))

    return MicroLM()


def onehot(windows: np.ndarray, vocab: int) -> np.ndarray:
    """(B, N) ids -> (B, N, V) float32 one-hot."""
    b, n = windows.shape
    x = np.zeros((b, n, vocab), dtype=np.float32)
    x[np.arange(b)[:, None], np.arange(n)[None, :], windows] = 1.0
    return x


def windows(ids: np.ndarray, context: int, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, N) input windows and (B,) next ids for the given start offsets."""
    idx = starts[:, None] + np.arange(context)[None, :]
    return ids[idx], ids[starts + context]


def train(module, ids: np.ndarray, context: int, vocab: int, steps: int, batch: int = 64, lr: float = 3e-3,
          label_smoothing: float = 0.1, seed: int = 0) -> float:
    """Train on random windows of ``ids``; return the last loss.

    Label smoothing keeps the logits in a narrow band (without it the unlikely characters' logits
    run to -60 while the likely ones sit near +15): the int8 logits then get a 3-5x finer scale
    and top-1 ties after quantization become rare.
    """
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    module.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        x, y = windows(ids, context, rng.integers(0, len(ids) - context - 1, batch))
        logits = module(torch.from_numpy(onehot(x, vocab)))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y), label_smoothing=label_smoothing)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    module.eval()
    return float(loss.item())
