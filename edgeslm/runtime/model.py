"""LoadedModel: a bundle opened with its engine, and the user-facing generate/stream/chat."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

from ..bundle import Bundle
from ..plugins import get_engine
from .generator import GenerationConfig, GenerationResult, Generator, Stream


class LoadedModel:
    def __init__(self, bundle: Bundle, engine, tokenizer, reuse_cache: bool = True):
        self.bundle = bundle
        self.engine = engine
        self.tokenizer = tokenizer
        self.generator = Generator(engine, tokenizer, reuse_cache=reuse_cache)

    @classmethod
    def open(cls, path: str | Path, engine_options: dict[str, Any] | None = None,
             trusted_keys=None, reuse_cache: bool = True, snapshot: bool | None = None) -> "LoadedModel":
        """Open ``path``: with ``trusted_keys`` the signature is checked over the manifest bytes
        that are then parsed, and the engine loads a private copy hashed while it was made
        (``snapshot``, default on with keys), so no file can be swapped after the check.

        ``engine_options`` are checked against the engine's declared options (strings from a
        command line are converted); ``reuse_cache=False`` makes every call prefill its whole
        prompt instead of continuing a cached prefix.
        """
        bundle = Bundle.open(path, verify=True, trusted_keys=trusted_keys, snapshot=snapshot)
        try:
            engine_cls = get_engine(bundle.format)
            engine = engine_cls(bundle, **engine_cls.coerce_options(engine_options))
            try:
                tokenizer = bundle.load_tokenizer()
            except BaseException:
                engine.close()
                raise
        except BaseException:
            bundle.close()
            raise
        return cls(bundle, engine, tokenizer, reuse_cache=reuse_cache)

    @property
    def has_chat_template(self) -> bool:
        return bool(self.tokenizer.chat_template)

    @property
    def spec(self):
        return self.bundle.spec

    def generate(self, prompt: str | Sequence[int], config: GenerationConfig | None = None, **kw) -> GenerationResult:
        """Generate a completion. Keyword arguments are :class:`GenerationConfig` fields."""
        return self.generator.generate(prompt, config, **kw)

    def stream(self, prompt: str | Sequence[int], config: GenerationConfig | None = None, **kw) -> Stream:
        """Like generate, but yields text pieces as they are produced; ``.result`` at the end."""
        return self.generator.stream(prompt, config, **kw)

    def chat(self, messages: Iterable[dict], config: GenerationConfig | None = None, **kw) -> GenerationResult:
        """Apply the model's chat template to ``[{"role": ..., "content": ...}]`` and generate."""
        return self.generator.chat(messages, config, **kw)

    def stream_chat(self, messages: Iterable[dict], config: GenerationConfig | None = None, **kw) -> Stream:
        return self.generator.stream_chat(messages, config, **kw)

    def close(self) -> None:
        self.engine.close()
        self.bundle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
