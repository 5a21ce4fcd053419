"""Model families: each maps a Hugging Face config (and GGUF metadata) to a DecoderConfig.

A family is data. One module per family registers a :class:`Family` with :func:`register`;
every module in this package is imported on first use, so adding a family is adding a file
(recipe: docs/DESIGN.md, "Add a family"). Nothing here imports torch.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

from ...errors import UnsupportedArchitectureError
from ..config import DecoderConfig


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # Hugging Face config.json "model_type" values
    from_hf: Callable[[dict[str, Any]], DecoderConfig]  # config.json dict -> description
    # GGUF side (edgeslm.sources.gguf): llama.cpp's general.architecture values, its metadata ->
    # a config.json dict, its tensor names -> Hugging Face names, and per-tensor fixes
    # (llama.cpp's Q/K row permutation, Gemma's stored 1+w norms).
    gguf_archs: tuple[str, ...] = ()
    gguf_config: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    gguf_tensors: dict[str, str] = field(default_factory=dict)
    gguf_fix: Callable[[str, Any, dict[str, Any]], Any] | None = None
    hf_class: str = ""  # transformers class for the reference module, e.g. "LlamaForCausalLM"


_REGISTRY: dict[str, Family] = {}
_loaded = False


def register(family: Family) -> Family:
    _REGISTRY[family.name] = family
    return family


def _load_all() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for mod in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{mod.name}")


def families() -> dict[str, Family]:
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def supported_names() -> list[str]:
    return list(families())


def _refuse(what: str, value: str) -> UnsupportedArchitectureError:
    return UnsupportedArchitectureError(
        f"{what} '{value}' is not supported; supported families: {', '.join(supported_names())}")


def for_model_type(model_type: str) -> Family:
    for fam in families().values():
        if model_type in fam.model_types:
            return fam
    raise _refuse("architecture", model_type)


def for_gguf_arch(arch: str) -> Family:
    for fam in families().values():
        if arch in fam.gguf_archs:
            return fam
    raise _refuse("GGUF architecture", arch)


def get(name: str) -> Family:
    fam = families().get(name)
    if fam is None:
        raise _refuse("family", name)
    return fam


def decoder_config(hf_config: dict[str, Any]) -> DecoderConfig:
    """The description of a model from its config.json dict (or ``transformers`` config.to_dict())."""
    return for_model_type(str(hf_config.get("model_type", "?"))).from_hf(hf_config)
