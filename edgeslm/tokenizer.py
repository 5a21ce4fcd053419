"""The device-side tokenizer: a ``tokenizers`` tokenizer plus the facts the model needs.

Special-token behaviour is explicit here instead of hidden in a post-processor: ``encode``
never adds special tokens by itself; it prepends BOS only when the model's own metadata says
so (``add_bos``). GGUF files and Hugging Face folders disagree on defaults, and a silent
extra BOS changes every logit the model produces.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .errors import BundleError, GenerationError

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "edgeslm_tokenizer.json"
#: Version of edgeslm_tokenizer.json. Readers refuse a newer one; a file without the field is
#: version 1 (written before the field existed).
CONFIG_SCHEMA_VERSION = 1


@dataclass
class Tokenizer:
    backend: "object"  # tokenizers.Tokenizer
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    add_bos: bool = False
    chat_template: str | None = None

    # -- text <-> ids ---------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        _check_text(text)
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if self.add_bos and self.bos_token_id is not None:
            ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    # -- chat -----------------------------------------------------------------------------
    def apply_chat_template(self, messages: Iterable[dict], add_generation_prompt: bool = True) -> str:
        """Render messages with the model's own Jinja chat template (sandboxed like transformers, and
        bounded in output, loops and time: see :mod:`edgeslm.chat_template`)."""
        messages = list(messages)
        for m in messages:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise GenerationError(f"each chat message needs 'role' and 'content', got {m!r}")
            if isinstance(m["content"], str):
                _check_text(m["content"])
        if not self.chat_template:
            raise GenerationError("this model has no chat template; use a plain prompt instead")
        from .chat_template import compile_template, render_compiled

        template = compile_template(self.chat_template)  # sandboxed and resource-bounded
        bos = self.backend.id_to_token(self.bos_token_id) if self.bos_token_id is not None else ""
        eos = self.backend.id_to_token(self.eos_token_ids[0]) if self.eos_token_ids else ""
        return render_compiled(template, messages=messages, add_generation_prompt=add_generation_prompt,
                               bos_token=bos, eos_token=eos)

    # -- persistence ----------------------------------------------------------------------
    def save(self, directory: str | Path) -> list[str]:
        directory = Path(directory)
        self.backend.save(str(directory / TOKENIZER_FILE))
        config = {
            "schema_version": CONFIG_SCHEMA_VERSION,
            "bos_token_id": self.bos_token_id,
            "eos_token_ids": list(self.eos_token_ids),
            "add_bos": self.add_bos,
            "chat_template": self.chat_template,
        }
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        return [TOKENIZER_FILE, CONFIG_FILE]

    @classmethod
    def load(cls, directory: str | Path) -> "Tokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        directory = Path(directory)
        try:
            backend = HFTokenizer.from_file(str(directory / TOKENIZER_FILE))
            config = json.loads((directory / CONFIG_FILE).read_text())
        except (OSError, ValueError, Exception) as exc:  # tokenizers raises a bare Exception
            raise BundleError(f"cannot read the tokenizer in {directory}: {' '.join(str(exc).split())[:300]}") from None
        _check_config(config, directory / CONFIG_FILE)
        return cls(backend=backend, bos_token_id=config.get("bos_token_id"),
                   eos_token_ids=tuple(config.get("eos_token_ids") or ()),
                   add_bos=bool(config.get("add_bos")), chat_template=config.get("chat_template"))


def _check_text(text) -> None:
    """GenerationError for text that is not a str of valid Unicode: bytes the shell could not decode
    arrive as lone surrogates (U+DC80..U+DCFF stand for the bytes 0x80..0xFF)."""
    if not isinstance(text, str):
        raise GenerationError(f"text must be str, not {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        ch = ord(text[exc.start])
        what = f"byte 0x{ch - 0xDC00:02x}" if 0xDC80 <= ch <= 0xDCFF else f"lone surrogate U+{ch:04X}"
        raise GenerationError(f"the text is not valid UTF-8: {what} at character {exc.start}; "
                              f"pass UTF-8 text (check the terminal's or the file's encoding)") from None


def _check_config(config, where: Path) -> None:
    """BundleError naming the field when edgeslm_tokenizer.json has the wrong JSON types."""
    def token_id(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if not isinstance(config, dict):
        raise BundleError(f"{where}: must be a JSON object, not {type(config).__name__}")
    from .bundle.schema import check_version

    check_version(config.get("schema_version", 1), CONFIG_SCHEMA_VERSION, str(where))  # absent: written before v1
    eos = config.get("eos_token_ids")
    checks = {
        "bos_token_id": config.get("bos_token_id") is None or token_id(config.get("bos_token_id")),
        "eos_token_ids": eos is None or (isinstance(eos, list) and all(token_id(t) for t in eos)),
        "add_bos": isinstance(config.get("add_bos", False), bool),
        "chat_template": config.get("chat_template") is None or isinstance(config.get("chat_template"), str),
    }
    for name, ok in checks.items():
        if not ok:
            raise BundleError(f"{where}: '{name}' has the wrong type ({type(config.get(name)).__name__})")


class IncrementalDecoder:
    """Turns a growing list of token ids into text pieces, never splitting a UTF-8 character.

    Byte-level BPE tokens can end inside a multi-byte character; the decoded text then ends in
    U+FFFD until the next token completes it. Such a tail is held back, and only a short
    window of ids is re-decoded each step, so streaming costs O(1) per token.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # ids before this index are fully emitted and no longer re-decoded
        self.read = 0  # ids before this index have been emitted as text

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix_text = self.tokenizer.decode(self.ids[self.prefix:self.read])
        text = self.tokenizer.decode(self.ids[self.prefix:])
        if len(text) > len(prefix_text) and not text.endswith("\ufffd"):
            piece = text[len(prefix_text):]
            self.prefix, self.read = self.read, len(self.ids)
            return piece
        return ""
