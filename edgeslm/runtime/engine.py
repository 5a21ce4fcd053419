"""The Engine contract every backend implements (device side: its runtime + numpy only).

An engine runs one exported model on one runtime and owns the KV cache in whatever layout
that runtime wants. It knows nothing about text, sampling or stopping: the core's
:class:`~edgeslm.runtime.generator.Generator` does all of that once for every backend.

Lifecycle::

    engine = EngineClass(bundle)        # opens the runtime session
    logits = engine.prefill(ids)        # (vocab,) float32 after the last prompt token
    logits = engine.decode(token_id)    # (vocab,) after appending one token
    logits = engine.prefill(more_ids)   # a prefill may also continue the cache (chat turns)
    engine.truncate(n)                  # keep only the first n cached tokens, if it can
    engine.reset()                      # forget the cache; next call is a prefill
    engine.close()

Each engine declares the options it accepts in :attr:`Engine.known_options`; values given as
strings (the command line) are converted by :meth:`Engine.coerce_options`, and unknown keys
are refused with the known ones named.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

from ..errors import EngineOptionError, GenerationError
from ..options import flag

if TYPE_CHECKING:  # pragma: no cover
    from ..bundle import Bundle


@dataclass(frozen=True)
class EngineOption:
    """One option an engine accepts: its kind (how a string from the command line converts)
    and a line of help."""

    kind: str  # "int" | "bool" | "str" | "list" (comma-separated on the command line)
    help: str = ""

    def coerce(self, name: str, value: Any) -> Any:
        if value is None:
            return None
        try:
            if self.kind == "list":
                items = value.split(",") if isinstance(value, str) else list(value)
                return [str(i).strip() for i in items if str(i).strip()]
            if self.kind == "bool":
                return flag(value, name)
            if self.kind == "int":
                return int(value)
        except (TypeError, ValueError):
            raise EngineOptionError(f"engine option {name}={value!r}: expected {self.kind}") from None
        return str(value)


class Engine(ABC):
    """Base class; subclasses implement the four abstract methods."""

    #: registry name, equal to the bundle format it runs ("onnx", "openvino", ...)
    name: str = ""
    #: options the constructor accepts; None = undeclared (a third-party engine: not checked)
    known_options: ClassVar[Mapping[str, EngineOption] | None] = None

    @classmethod
    def coerce_options(cls, options: Mapping[str, Any] | None) -> dict[str, Any]:
        """Check option names against :attr:`known_options` and convert string values
        (``"2"`` -> 2, ``"a,b"`` -> ``["a", "b"]``); refuses unknown names, naming the known ones."""
        options = dict(options or {})
        known = cls.known_options
        if known is None:
            return options
        unknown = sorted(k for k in options if k not in known)
        if unknown:
            have = ", ".join(f"{k} ({o.kind})" for k, o in known.items()) or "none"
            raise EngineOptionError(f"unknown {cls.name or cls.__name__} engine option "
                                    f"{', '.join(map(repr, unknown))}; known: {have}")
        return {k: known[k].coerce(k, v) for k, v in options.items()}

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

    def truncate(self, length: int) -> bool:
        """Keep the first ``length`` cached tokens and drop the rest; True when done.

        The default can only keep everything or nothing (reset); engines whose runtime can cut
        a cache override it. The Generator calls it to reuse a shared prefix (chat turns) and
        falls back to :meth:`reset` plus a full prefill when it returns False.
        """
        if length == self.position:
            return True
        if length == 0:
            self.reset()
            return True
        return False

    def close(self) -> None:
        """Release the runtime's resources (sessions, compiled models)."""

    def vendor_runtimes(self) -> dict[str, Callable[[list[int], list[int]], dict]]:
        """The format's own LLM runtimes that open this bundle through the interop files its
        exporter wrote (onnxruntime-genai, OpenVINO GenAI, LiteRT-LM), by name.

        Each callable takes prompt ids and this engine's greedy tokens for them, runs the vendor
        runtime greedily on the same bundle and returns ``{"passed": bool, ...}``; it raises
        ImportError when that runtime is not installed. ``edgeslm verify --vendor`` runs them.
        Default: none.
        """
        return {}

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


def greedy_tokens(engine: Engine, prompt_ids: Sequence[int], new_tokens: int) -> list[int]:
    """Greedy continuation through ``engine`` (argmax of every step, no stop token), from a reset."""
    engine.reset()
    logits = engine.prefill(list(prompt_ids))
    out: list[int] = []
    for _ in range(new_tokens):
        out.append(int(np.argmax(logits)))
        if len(out) < new_tokens:
            logits = engine.decode(out[-1])
    return out
