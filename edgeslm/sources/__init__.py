"""Load a model from a GGUF file, a Hugging Face folder, or a built-in name.

>>> source = load_source("smollm2-135m")          # doctest: +SKIP
>>> source.spec.num_layers                          # doctest: +SKIP
30
"""

from __future__ import annotations

import difflib
from pathlib import Path

from ..errors import UnknownModelError
from .base import SourceModel, sha256_file
from .catalog import ALIASES, BUILTINS, resolve_builtin

__all__ = ["SourceModel", "load_source", "resolve_model_path", "sha256_file"]


def resolve_model_path(name_or_path: str | Path) -> tuple[str, Path]:
    """Map a built-in name or a path to (display name, path); unknown names get suggestions."""
    text = str(name_or_path)
    builtin = resolve_builtin(text)
    if builtin is not None:
        return ALIASES.get(text.lower(), text.lower()), builtin
    path = Path(text).expanduser()
    if path.exists():
        return path.name, path
    names = sorted(BUILTINS) + sorted(ALIASES)
    close = difflib.get_close_matches(text.lower(), names, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownModelError(
        f"'{text}' is neither a built-in model ({', '.join(sorted(BUILTINS))}) nor an existing "
        f"GGUF file or Hugging Face folder.{hint}"
    )


def load_source(name_or_path: str | Path) -> SourceModel:
    name, path = resolve_model_path(name_or_path)
    if path.is_dir():
        from .hf import load_hf_folder

        return load_hf_folder(path, name=name)
    from .gguf import load_gguf

    return load_gguf(path, name=name)
