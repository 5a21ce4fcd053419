"""SourceModel: a loaded model on the workstation, the starting point of every export."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..spec import ModelSpec
from ..tokenizer import Tokenizer


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class SourceModel:
    """A model as the workstation sees it.

    ``module`` is the Hugging Face torch module (the reference every export is checked
    against); ``export_module()`` re-authors the same weights for converters.
    """

    name: str  # what the user typed, or the file name
    path: Path  # the GGUF file or the Hugging Face folder
    kind: str  # "gguf" | "hf"
    spec: ModelSpec
    tokenizer: Tokenizer
    module: Any  # transformers PreTrainedModel, float32, eval mode
    sha256: str  # of the GGUF file, or of the folder's weight files in name order

    def export_module(self, context_length: int | None = None):
        """The export-friendly :class:`~edgeslm.arch.decoder.Decoder` with these weights
        (``context_length``: the export's, when it differs from the model's maximum)."""
        from ..arch.decoder import from_state_dict

        return from_state_dict(self.spec.description, self.module.state_dict(),
                               low_rank=self.spec.extra.get("low_rank") or None, context_length=context_length)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "kind": self.kind, "sha256": self.sha256,
                "architecture": self.spec.architecture, "parameters": self.spec.num_parameters}
