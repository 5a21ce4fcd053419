"""Next-token selection from logits: greedy, temperature, top-k, top-p (numpy only)."""

from __future__ import annotations

import numpy as np


def sample(logits: np.ndarray, rng: np.random.Generator | None, temperature: float = 0.0,
           top_k: int = 0, top_p: float = 1.0) -> int:
    """Pick one token id. ``temperature <= 0`` (or no rng) is greedy argmax."""
    if temperature <= 0.0 or rng is None:
        return int(np.argmax(logits))
    scores = logits.astype(np.float64) / temperature
    vocab = scores.shape[-1]
    if 0 < top_k < vocab:
        keep = np.argpartition(scores, -top_k)[-top_k:]
    else:
        keep = np.arange(vocab)
    kept = scores[keep]
    order = np.argsort(-kept)  # descending
    keep, kept = keep[order], kept[order]
    probs = np.exp(kept - kept[0])
    probs /= probs.sum()
    if top_p < 1.0:
        # smallest prefix whose mass reaches top_p (always at least one token)
        cutoff = int(np.searchsorted(np.cumsum(probs), top_p) + 1)
        keep, probs = keep[:cutoff], probs[:cutoff]
        probs = probs / probs.sum()
    return int(keep[rng.choice(len(keep), p=probs)])
