"""The Engine contract every backend implements (device side: its runtime + numpy only).

An engine runs one exported model on one runtime and owns the KV cache in whatever layout
that runtime wants. It knows nothing about text, sampling or stopping: the core's
:class:`~edgeslm.runtime.generator.Generator` does all of that once for every backend.

Lifecycle::

    engine = EngineClass(bundle)        # opens the runtime session
    logits = engine.prefill(ids)        # (vocab,) float32 after the last prompt token
    logits = engine.decode(token_id)    # (vocab,) after appending one token
    engine.reset()                      # forget the cache; next call is a prefill
    engine.close()
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import GenerationError

if TYPE_CHECKING:  # pragma: no cover
    from ..bundle import Bundle


class Engine(ABC):
    """Base class; subclasses implement the four abstract methods."""

    #: registry name, equal to the bundle format it runs ("onnx", "openvino", ...)
    name: str = ""

    def __init__(self, bundle: "Bundle", **options: Any):
        self.bundle = bundle
        self.spec = bundle.spec
        self.options = options
        self.position = 0  # tokens in the cache

    @property
    def max_context(self) -> int:
        """Longest sequence (prompt + generated) this engine accepts."""
        return int(self.bundle.manifest.get("context_length") or self.spec.context_length)

    @abstractmethod
    def prefill(self, token_ids: Sequence[int]) -> np.ndarray:
        """Append ``token_ids`` to the cache and return next-token logits, shape (vocab,)."""

    @abstractmethod
    def decode(self, token_id: int) -> np.ndarray:
        """Append one token and return next-token logits, shape (vocab,)."""

    @abstractmethod
    def reset(self) -> None:
        """Drop the KV cache so the next call starts a new sequence."""

    def close(self) -> None:
        """Release the runtime's resources (sessions, compiled models)."""

    # -- shared input checks, so every backend refuses bad input the same way ------------
    def check_tokens(self, token_ids: Sequence[int]) -> np.ndarray:
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise GenerationError("empty input: at least one token is needed")
        bad = ids[(ids < 0) | (ids >= self.spec.vocab_size)]
        if bad.size:
            raise GenerationError(f"token id {int(bad[0])} is outside the vocabulary (0..{self.spec.vocab_size - 1})")
        if self.position + ids.size > self.max_context:
            raise GenerationError(
                f"context overflow: {self.position} cached + {ids.size} new tokens > "
                f"max context {self.max_context}")
        return ids

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
