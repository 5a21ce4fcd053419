"""GGUF files -> SourceModel.

The file is validated with the ``gguf`` package (magic, header, every tensor inside the file)
before anything heavy runs, so a truncated download or a wrong file gives one clear error.
Weights are dequantized by transformers' GGUF loader (which also undoes llama.cpp's Q/K row
permutation); tokenizer ids and the chat template are taken from the GGUF metadata itself,
which is the authority on BOS/EOS (transformers' defaults have differed from it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._deps import quiet_transformers, require
from ..arch import check_supported
from ..errors import ModelLoadError
from ..tokenizer import Tokenizer
from .base import SourceModel, sha256_file

GGUF_MAGIC = b"GGUF"


def read_gguf_metadata(path: str | Path) -> tuple[dict[str, Any], Any]:
    """Validate a GGUF file and return (metadata without the vocabulary arrays, reader)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"{path}: not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    gguf = require("gguf", "export", "reading GGUF files")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # the reader raises ValueError/IndexError/struct errors on damage
        raise ModelLoadError(f"{path}: corrupt or truncated GGUF file ({type(exc).__name__}: {exc})") from exc
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise ModelLoadError(f"{path}: truncated GGUF file ({size} bytes, tensors need {end})")
    meta: dict[str, Any] = {}
    for key, fld in reader.fields.items():
        if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
                   "tokenizer.ggml.scores"):
            meta[key] = len(fld.data)  # sizes only; the arrays are large
            continue
        try:
            meta[key] = fld.contents()
        except Exception:  # pragma: no cover - unusual field types
            continue
    return meta, reader


def load_gguf(path: str | Path, name: str | None = None) -> SourceModel:
    path = Path(path)
    meta, _ = read_gguf_metadata(path)
    arch = meta.get("general.architecture", "?")
    check_supported(arch)
    transformers = quiet_transformers()
    torch = require("torch", "export", "loading models")
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32)
        hf_tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as exc:
        raise ModelLoadError(f"{path}: transformers could not load this GGUF ({exc})") from exc
    # A GGUF-loaded model carries a gguf quantization config that blocks save_pretrained.
    model.config.quantization_config = None
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    model.eval()

    bos = meta.get("tokenizer.ggml.bos_token_id")
    eos = meta.get("tokenizer.ggml.eos_token_id")
    eos_ids = [int(eos)] if eos is not None else []
    tokenizer = Tokenizer(
        backend=hf_tok.backend_tokenizer,
        bos_token_id=int(bos) if bos is not None else None,
        eos_token_ids=(),
        add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        chat_template=meta.get("tokenizer.chat_template"),
    )
    # Chat models end a turn with their end-of-turn token; treat it as EOS too.
    im_end = tokenizer.token_to_id("<|im_end|>")
    if im_end is not None and im_end not in eos_ids:
        eos_ids.append(im_end)
    tokenizer.eos_token_ids = tuple(eos_ids)

    from .hf import spec_from_config

    spec = spec_from_config(model.config, tokenizer, name=meta.get("general.name") or path.stem)
    return SourceModel(name=name or path.name, path=path, kind="gguf", spec=spec, tokenizer=tokenizer,
                       module=model, sha256=sha256_file(path))
