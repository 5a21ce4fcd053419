"""A multi-turn conversation on a LoadedModel: history, system message, KV-cache reuse.

::

    chat = ChatSession(model, system="Be brief.")
    for piece in chat.ask("What is an edge device?"):
        print(piece, end="")
    chat.ask("Name one.").result            # the stream's GenerationResult once exhausted

Each turn re-renders the whole conversation with the model's chat template; the Generator
sees that the rendered ids start with what its KV cache already holds (the previous turns and
the reply it generated) and prefills only the new turn, so the time to first token of a turn
does not grow with the history. When the conversation outgrows the context, the oldest
exchanges are dropped (the system message stays) and the cache is rebuilt once.
"""

from __future__ import annotations

from typing import Any

from ..errors import GenerationError
from .generator import GenerationConfig, Stream


class ChatSession:
    def __init__(self, model: Any, system: str | None = None, config: GenerationConfig | None = None):
        if not model.tokenizer.chat_template:
            raise GenerationError("this model has no chat template, so it cannot chat; "
                                  "use `edgeslm run --raw` for plain completion")
        self.model = model
        self.system = system or None
        self.config = config or GenerationConfig()
        self.history: list[dict[str, str]] = []  # user/assistant turns, oldest first
        self.dropped = 0  # messages dropped so far to fit the context

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history

    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.history.clear()
        self.model.generator.forget_cache()

    def set_system(self, text: str | None) -> None:
        self.system = text or None

    def ask(self, text: str) -> "TurnStream":
        """Add a user turn and stream the reply. The reply joins the history when the stream
        ends: exhausted, closed (Ctrl-C: the part shown so far) or broken by an exception."""
        if not text.strip():
            raise GenerationError("empty message")
        self.history.append({"role": "user", "content": text})
        try:
            stream = self.model.generator.stream(self._fit(), self.config)
        except Exception:
            self.history.pop()
            raise
        return TurnStream(stream, self)

    def answered(self, text: str) -> None:
        """Record the assistant's reply (complete, or the part shown before Ctrl-C)."""
        if self.history and self.history[-1]["role"] == "user":
            self.history.append({"role": "assistant", "content": text})

    def _fit(self) -> list[int]:
        """Token ids of the conversation, dropping the oldest exchanges until it fits the context
        with room for a reply."""
        tok, eng = self.model.tokenizer, self.model.engine
        head = [{"role": "system", "content": self.system}] if self.system else []
        alone = len(tok.encode(tok.apply_chat_template(head + self.history[-1:])))
        if alone >= eng.max_context:  # even without any history there is no room to answer
            raise GenerationError(f"context overflow: this message needs {alone} tokens with the chat template; "
                                  f"the context is {eng.max_context}")
        room = min(self.config.max_new_tokens, eng.max_context // 2)
        while True:
            ids = tok.encode(tok.apply_chat_template(self.messages()))
            if len(ids) + room <= eng.max_context or len(self.history) <= 1:
                return ids
            drop = 2 if len(self.history) > 2 else 1  # one user/assistant exchange
            del self.history[:drop]
            self.dropped += drop


class TurnStream:
    """The Generator's stream (text pieces; ``.result``, ``.close()``), recording the reply
    in the session when it ends."""

    def __init__(self, inner: Stream, session: ChatSession):
        self._inner = inner
        self._session = session
        self._shown: list[str] = []
        self._done = False

    def __next__(self) -> str:
        try:
            piece = next(self._inner)
        except StopIteration:
            self._finish()
            raise
        except KeyboardInterrupt:  # Ctrl-C inside the engine: keep what was shown
            self._finish()
            raise
        except BaseException:  # the turn failed (e.g. context overflow): keep what was shown, if anything
            self._finish(failed=not self._shown)
            raise
        self._shown.append(piece)
        return piece

    def __iter__(self):
        return self

    @property
    def result(self):
        return self._inner.result

    def close(self) -> None:
        self._inner.close()
        self._finish()

    def _finish(self, failed: bool = False) -> None:
        if self._done:
            return
        self._done = True
        history = self._session.history
        if failed and history and history[-1]["role"] == "user":
            history.pop()  # nothing was said: the turn did not happen
            return
        res = self._inner.result
        self._session.answered(res.text if res is not None else "".join(self._shown))
