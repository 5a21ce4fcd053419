"""The contract every technique keeps: a compressed model is a new :class:`SourceModel`.

``.module`` is a transformers model (a standard Llama with smaller sizes after structured
pruning or distillation; Linear pairs after low-rank factorization), ``.spec`` matches it, and
the unchanged export pipeline exports it. :func:`save_hf_folder` writes it as a real Hugging
Face folder; :func:`load_model` reads such a folder back (low-rank ones included).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from ..sources import SourceModel, load_source

from ..sources.hf import COMPRESSION_HISTORY, LOW_RANK_CONFIG_KEY  # noqa: F401  (the compression API names them)


def state_sha256(module) -> str:
    """sha256 over a module's tensors (names, shapes, bytes), for in-memory models."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:".encode())
        h.update(t.detach().contiguous().float().numpy().tobytes())
    return h.hexdigest()


def derive(source: SourceModel, module, step: dict[str, Any], name: str | None = None) -> SourceModel:
    """A new SourceModel for ``module`` (a transformers model derived from ``source``).

    ``step`` describes what was done (``{"technique": "prune", ...}``); it is appended to
    ``spec.extra["compression"]`` so the bundle manifest records the model's history.
    """
    from ..sources.hf import spec_from_config

    module.eval()
    low_rank = getattr(module.config, LOW_RANK_CONFIG_KEY, None) or {}
    extra = dict(source.spec.extra)
    extra["compression"] = [*extra.get("compression", []), step]
    if low_rank:
        extra["low_rank"] = dict(low_rank)
    else:
        extra.pop("low_rank", None)
    label = name or f"{source.name}+{step.get('technique', 'compressed')}"
    spec = spec_from_config(module.config, source.tokenizer, name=label)
    spec = dataclasses.replace(spec, extra=extra, context_length=source.spec.context_length)
    return SourceModel(name=label, path=source.path, kind=source.kind, spec=spec, tokenizer=source.tokenizer,
                       module=module, sha256=state_sha256(module))


def count_parameters(module) -> int:
    """Unique parameters (a tied lm_head counted once)."""
    seen, total = set(), 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def count_nonzero(module) -> int:
    seen, total = set(), 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += int((p != 0).sum())
    return total


def save_hf_folder(source: SourceModel, folder: str | Path) -> Path:
    """Write ``source`` as a Hugging Face folder that ``edgeslm export FOLDER`` loads.

    config.json + model.safetensors (save_pretrained), tokenizer.json, and tokenizer_config.json
    carrying BOS/EOS and the chat template, with BOS/EOS ids taken from the SourceModel (the
    authority) rather than from transformers' config, which GGUF loading gets wrong.
    """
    from .._deps import quiet_transformers
    from ..outputs import make_dir

    quiet_transformers()  # no shard-writing progress bars
    folder = Path(folder)
    make_dir(folder)
    module, tok, spec = source.module, source.tokenizer, source.spec
    eos = list(spec.eos_token_ids)
    module.config.bos_token_id = spec.bos_token_id
    module.config.eos_token_id = eos[0] if len(eos) == 1 else eos
    if getattr(module, "generation_config", None) is not None:
        module.generation_config.bos_token_id = module.config.bos_token_id
        module.generation_config.eos_token_id = module.config.eos_token_id
    if spec.extra.get("low_rank"):
        setattr(module.config, LOW_RANK_CONFIG_KEY, dict(spec.extra["low_rank"]))
    module.save_pretrained(str(folder))
    tok.backend.save(str(folder / "tokenizer.json"))
    token = tok.backend.id_to_token
    cfg = {"add_bos_token": bool(tok.add_bos), "chat_template": tok.chat_template,
           "bos_token": token(spec.bos_token_id) if spec.bos_token_id is not None else None,
           "eos_token": token(eos[0]) if eos else None}
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    if spec.extra.get("compression"):
        (folder / COMPRESSION_HISTORY).write_text(json.dumps(spec.extra["compression"], indent=2) + "\n")
    return folder


def load_model(name_or_path: str | Path) -> SourceModel:
    """:func:`edgeslm.sources.load_source` (it reads compressed folders too: low-rank layers and
    the compression history); kept here for the compression API's callers."""
    return load_source(name_or_path)
