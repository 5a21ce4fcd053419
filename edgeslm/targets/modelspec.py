"""A ModelSpec without loading the model: from GGUF metadata, config.json, or a bundle manifest.

`edgeslm fit` needs only shapes, so it never imports torch: a GGUF header is read with the
numpy-only reader (the vocabulary arrays are skipped), a Hugging Face folder's config.json is
plain JSON, and a bundle's manifest already holds its spec.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError
from ..spec import ModelSpec


def read_spec(model: Any) -> ModelSpec:
    """``model``: a built-in name, a .gguf file, an HF folder, a bundle folder, or a SourceModel."""
    if hasattr(model, "spec") and isinstance(model.spec, ModelSpec):
        return model.spec
    from ..sources import resolve_model_path

    name, path = resolve_model_path(model)
    if path.is_dir():
        if (path / "manifest.json").is_file():
            from ..bundle import Bundle

            return Bundle.open(path, verify=False).spec
        return _spec_from_config_json(path, name)
    return _spec_from_gguf(path, name)


def _spec_from_config_json(folder: Path, name: str) -> ModelSpec:
    """The same description `export` builds (edgeslm.arch.families), so `fit` sizes exactly what
    `export` would produce and refuses what `export` would refuse."""
    from ..arch.families import decoder_config

    cfg_file = folder / "config.json"
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{folder}: not a Hugging Face model folder ({cfg_file}: {exc})") from exc
    cfg = cfg.get("text_config", cfg)  # multimodal configs nest the language model's
    try:
        desc = decoder_config(cfg)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{cfg_file}: cannot size the model ({type(exc).__name__}: {exc})") from exc
    return ModelSpec.from_decoder(desc, name=name)


def _spec_from_gguf(path: Path, name: str) -> ModelSpec:
    """The description `export` builds from the same file (the family's ``gguf_config``, then
    ``from_hf``), from the header alone: an unsupported architecture is refused here too."""
    from ..arch.families import decoder_config
    from ..sources.gguf import gguf_config
    from ..sources.gguf_file import GGUFFile

    gf = GGUFFile(path)
    _, cfg = gguf_config(gf)
    try:
        desc = decoder_config(cfg)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{path}: cannot size the model ({type(exc).__name__}: {exc})") from exc
    return ModelSpec.from_decoder(desc, name=name)
