"""Numpy metrics over logits; shared by the parity check, `edgeslm eval` and benchmarks."""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def kl_divergence(ref_logits: np.ndarray, test_logits: np.ndarray) -> np.ndarray:
    """KL(ref || test) per row, in nats."""
    lp, lq = log_softmax(ref_logits), log_softmax(test_logits)
    return (np.exp(lp) * (lp - lq)).sum(axis=-1)


def top1_agreement(ref_logits: np.ndarray, test_logits: np.ndarray) -> float:
    """Fraction of rows whose argmax is the same."""
    return float((ref_logits.argmax(-1) == test_logits.argmax(-1)).mean())


def nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of ``targets`` (rows) under ``logits``."""
    return -log_softmax(logits)[np.arange(len(targets)), targets]
