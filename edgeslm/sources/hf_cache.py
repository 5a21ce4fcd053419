"""The KV-cache argument of a transformers model, across the rename in transformers 5.

transformers 5 renamed ``past_key_values`` to ``cache`` (the forward argument and the output
field; FINDINGS.md). Code that steps a Hugging Face module token by token asks here instead of
checking the version itself.
"""

from __future__ import annotations

import inspect
from typing import Any


def cache_argument(module) -> str:
    """The name ``module.forward`` takes its cache under: ``cache`` (transformers 5) or ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def cache_of(out) -> Any:
    """The cache a forward call returned (``out.cache`` or ``out.past_key_values``)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values
