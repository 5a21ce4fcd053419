"""Parity between an export and its source: token agreement, KL divergence, perplexity."""

from .metrics import kl_divergence, log_softmax, top1_agreement
from .parity import DEFAULT_PROMPTS, ParityReport, reference_run, run_parity

__all__ = ["DEFAULT_PROMPTS", "ParityReport", "kl_divergence", "log_softmax", "reference_run",
           "run_parity", "top1_agreement"]
