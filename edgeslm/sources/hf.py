"""Hugging Face folders (config.json + *.safetensors + tokenizer.json) -> SourceModel."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from .._deps import quiet_transformers, require
from ..errors import ModelLoadError
from ..spec import ModelSpec
from ..tokenizer import Tokenizer
from .base import SourceModel, sha256_file

#: config.json key recording factorized layers: {"model.layers.0.mlp.up_proj": rank, ...}
LOW_RANK_CONFIG_KEY = "edgeslm_low_rank"
#: written next to a compressed model's weights by edgeslm.compress: the steps that made it
COMPRESSION_HISTORY = "edgeslm_compression.json"


def spec_from_config(config: Any, tokenizer: Tokenizer, name: str) -> ModelSpec:
    """A ModelSpec (with its decoder description) from a transformers config object or a
    config.json dict, for HF folders and GGUF files alike."""
    from ..arch.families import decoder_config

    cfg = config if isinstance(config, dict) else config.to_dict()
    try:
        desc = decoder_config(cfg)
    except (KeyError, ValueError) as exc:
        raise ModelLoadError(f"config of '{name}' cannot be described: {type(exc).__name__}: {exc}") from exc
    return ModelSpec.from_decoder(desc, bos_token_id=tokenizer.bos_token_id, eos_token_ids=tokenizer.eos_token_ids,
                                  chat_template=tokenizer.chat_template, name=name)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ModelLoadError(f"{path}: not valid JSON ({exc})") from exc


def _as_list(x) -> list[int]:
    if x is None:
        return []
    return [int(i) for i in (x if isinstance(x, (list, tuple)) else [x])]


def load_hf_tokenizer(folder: Path) -> Tokenizer:
    from tokenizers import Tokenizer as HFTokenizer

    tok_file = folder / "tokenizer.json"
    if not tok_file.is_file():
        raise ModelLoadError(f"{folder}: no tokenizer.json (edgeslm needs a fast tokenizer file)")
    try:
        backend = HFTokenizer.from_file(str(tok_file))
    except Exception as exc:
        raise ModelLoadError(f"{tok_file}: unreadable tokenizer ({exc})") from exc
    cfg = _read_json(folder / "tokenizer_config.json")
    gen = _read_json(folder / "generation_config.json")
    model_cfg = _read_json(folder / "config.json")

    def token_id(value):
        if isinstance(value, dict):
            value = value.get("content")
        return backend.token_to_id(value) if isinstance(value, str) else None

    bos = token_id(cfg.get("bos_token"))
    if bos is None:
        bos = (_as_list(gen.get("bos_token_id")) or _as_list(model_cfg.get("bos_token_id")) or [None])[0]
    eos = _as_list(gen.get("eos_token_id")) or _as_list(model_cfg.get("eos_token_id"))
    cfg_eos = token_id(cfg.get("eos_token"))
    if cfg_eos is not None and cfg_eos not in eos:
        eos.append(cfg_eos)
    template = cfg.get("chat_template")
    if (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text()
    return Tokenizer(backend=backend, bos_token_id=bos, eos_token_ids=tuple(eos),
                     add_bos=bool(cfg.get("add_bos_token", False)), chat_template=template)


def folder_sha256(folder: Path) -> str:
    """sha256 over the weight files' own sha256s, in name order."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}:{sha256_file(f)}\n".encode())
    return h.hexdigest()


def load_hf_folder(folder: str | Path, name: str | None = None) -> SourceModel:
    folder = Path(folder)
    config = _read_json(folder / "config.json")
    if not config:
        raise ModelLoadError(f"{folder}: not a Hugging Face model folder (no config.json)")
    if config.get(LOW_RANK_CONFIG_KEY):  # factorized by edgeslm.compress.lowrank: Linear pairs, not dense
        return _load_low_rank_folder(folder)
    from ..arch.families import decoder_config

    decoder_config(config.get("text_config") or config)  # refuse an unsupported family before reading weights
    if not (list(folder.glob("*.safetensors")) or list(folder.glob("*.bin"))):
        raise ModelLoadError(f"{folder}: no weights (*.safetensors)")
    tokenizer = load_hf_tokenizer(folder)
    transformers = quiet_transformers()
    torch = require("torch", "export", "loading models")
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    except Exception as exc:
        raise ModelLoadError(f"{folder}: transformers could not load the model ({exc})") from exc
    model.eval()
    spec = spec_from_config(model.config, tokenizer, name=name or folder.name)
    history = folder / COMPRESSION_HISTORY
    if history.is_file():  # written by edgeslm.compress: keep the model's compression history
        spec = dataclasses.replace(spec, extra={**spec.extra, "compression": json.loads(history.read_text())})
    return SourceModel(name=name or folder.name, path=folder, kind="hf", spec=spec, tokenizer=tokenizer,
                       module=model, sha256=folder_sha256(folder))


def _load_low_rank_folder(folder: Path) -> SourceModel:
    import torch
    from safetensors.torch import load_file

    from ..arch.lowrank import apply_low_rank

    transformers = quiet_transformers()
    config = transformers.AutoConfig.from_pretrained(str(folder))
    ranks = dict(getattr(config, LOW_RANK_CONFIG_KEY))
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    apply_low_rank(model, ranks)
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(f)))
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise ModelLoadError(f"{folder}: low-rank weights do not match config.json: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    model.eval()
    tokenizer = load_hf_tokenizer(folder)
    spec = spec_from_config(config, tokenizer, name=folder.name)
    extra = {"low_rank": ranks}
    history = folder / COMPRESSION_HISTORY
    if history.is_file():
        extra["compression"] = json.loads(history.read_text())
    spec = dataclasses.replace(spec, extra=extra)
    return SourceModel(name=folder.name, path=folder, kind="hf", spec=spec, tokenizer=tokenizer, module=model,
                       sha256=folder_sha256(folder))
