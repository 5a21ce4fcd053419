"""Hugging Face folders (config.json + *.safetensors + tokenizer.json) -> SourceModel."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .._deps import quiet_transformers, require
from ..arch import check_supported
from ..errors import ModelLoadError
from ..spec import ModelSpec
from ..tokenizer import Tokenizer
from .base import SourceModel, sha256_file


def spec_from_config(config: Any, tokenizer: Tokenizer, name: str) -> ModelSpec:
    """A ModelSpec from a transformers config object (HF folder and GGUF alike)."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    rope = getattr(config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta") if isinstance(rope, dict) else None
    if theta is None:
        theta = getattr(config, "rope_theta", 10000.0)
    if isinstance(rope, dict) and rope.get("rope_type", "default") not in ("default", None):
        raise ModelLoadError(f"RoPE scaling '{rope.get('rope_type')}' is not supported yet (only default RoPE)")
    return ModelSpec(
        architecture=config.model_type,
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_layers=config.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        intermediate_size=config.intermediate_size,
        context_length=getattr(config, "max_position_embeddings", 2048),
        rope_theta=float(theta),
        rms_norm_eps=float(config.rms_norm_eps),
        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_ids=tokenizer.eos_token_ids,
        chat_template=tokenizer.chat_template,
        name=name,
    )


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
    if config.get("edgeslm_low_rank"):  # factorized by edgeslm.compress.lowrank: Linear pairs, not dense
        from ..compress.model import load_model

        return load_model(folder)
    check_supported(config.get("model_type", "?"))
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
    return SourceModel(name=name or folder.name, path=folder, kind="hf", spec=spec, tokenizer=tokenizer,
                       module=model, sha256=folder_sha256(folder))
