"""Text and chat data for calibration, distillation, fine-tuning and evaluation."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import EdgeSLMError

#: Calibration text for activation-aware pruning when the user gives none. Deliberately not
#: the parity check's PERPLEXITY_TEXT, so evaluation is not measured on calibration data.
CALIBRATION_TEXT = (
    "Small language models run on phones, single-board computers and microcontrollers. They answer "
    "questions, summarize notes and control devices without a network connection. def mean(xs):\n"
    "    return sum(xs) / len(xs)\n"
    "The river flows through the old town, past the market and the cathedral, to the sea. "
    "<|im_start|>user\nHow do plants make food?<|im_end|>\n<|im_start|>assistant\n"
    "Plants use sunlight, water and carbon dioxide to make sugar in a process called photosynthesis.<|im_end|>\n"
    "In 1969 two astronauts walked on the Moon while a third orbited above them."
)

#: Seed prompts the teacher continues when distillation has no text file.
SEED_PROMPTS = (
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def quicksort(items):\n",
    "<|im_start|>user\nExplain how a battery works.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nGive me three tips for learning to cook.<|im_end|>\n<|im_start|>assistant\n",
    "The most important invention of the 20th century was",
    "Photosynthesis is the process by which",
    "<|im_start|>user\nWhat is an edge device?<|im_end|>\n<|im_start|>assistant\n",
)


class DataError(EdgeSLMError):
    """A training or evaluation data file is missing or malformed."""


def read_text(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such text file")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    return text


def read_chat_jsonl(path: str | Path) -> list[list[dict]]:
    """Chat examples, one JSON object a line: ``{"messages": [{"role", "content"}, ...]}``
    (the last message is the one trained on), or ``{"prompt": ..., "completion": ...}``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such JSONL file")
    examples = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{path}:{n}: not JSON ({exc})") from exc
        if "messages" in obj:
            msgs = obj["messages"]
        elif "prompt" in obj and "completion" in obj:
            msgs = [{"role": "user", "content": obj["prompt"]}, {"role": "assistant", "content": obj["completion"]}]
        else:
            raise DataError(f"{path}:{n}: expected a 'messages' list or 'prompt' + 'completion'")
        if not msgs or not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs):
            raise DataError(f"{path}:{n}: each message needs 'role' and 'content'")
        examples.append(msgs)
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


def token_windows(ids: list[int], seq_len: int) -> list[list[int]]:
    """Cut a token stream into windows of ``seq_len`` (the last partial window kept if long enough)."""
    wins = [ids[i:i + seq_len] for i in range(0, len(ids), seq_len)]
    return [w for w in wins if len(w) >= max(2, seq_len // 2)]
