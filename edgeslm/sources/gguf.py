"""GGUF files -> SourceModel, without transformers' GGUF path.

::

    GGUFFile (gguf_file.py: header, metadata, tensor table; validated, nothing read yet)
      │ family = families.for_gguf_arch(general.architecture)   <- unsupported: refused here, in ms
      │ cfg = family.gguf_config(metadata)                        config.json-style dict
      ▼
    transformers model from cfg (no weight init) ◄── state dict: each tensor dequantized
      │                                              (gguf_quants.py), renamed (family.gguf_tensors)
      │                                              and fixed (family.gguf_fix: Q/K order, 1+w norms)
    tokenizer from the metadata: vocabulary via transformers' GGUF tokenizer builders; BOS, EOS,
    end-of-turn ids, add_bos and the chat template from the file itself

The GGUF metadata is the authority on special tokens (transformers' defaults have differed from
it). End-of-turn ids are the file's ``eos``/``eot``/``eom`` ids plus the special token its chat
template closes an assistant turn with (``<|im_end|>``, ``<end_of_turn>``, ``<|eot_id|>``...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._deps import quiet_transformers, require
from ..errors import EdgeSLMError, ModelLoadError, UnsupportedArchitectureError
from ..tokenizer import Tokenizer
from .base import SourceModel, sha256_file
from .gguf_file import GGUFFile, StringArray

_CONTROL = 3  # llama.cpp token type of special tokens


def read_gguf_metadata(path: str | Path) -> tuple[dict[str, Any], GGUFFile]:
    """Validate a GGUF file and return (metadata with long string arrays as their lengths, file)."""
    gf = GGUFFile(path)
    return gf.small_metadata(), gf


def gguf_family(arch: str):
    """The family that reads GGUF files of llama.cpp architecture ``arch``, or
    UnsupportedArchitectureError naming the supported ones."""
    from ..arch import families

    try:
        return families.for_gguf_arch(arch)
    except UnsupportedArchitectureError:
        supported = sorted(a for f in families.families().values() for a in f.gguf_archs)
        raise UnsupportedArchitectureError(
            f"GGUF architecture '{arch}' is not supported; supported: {', '.join(supported)} "
            f"(families: {', '.join(families.supported_names())})") from None


def gguf_config(gf: GGUFFile) -> tuple[Any, dict[str, Any]]:
    """(family, config.json-style dict) from the metadata alone (and the few config tensors)."""
    from ..arch.gguf_common import CONFIG_TENSORS

    family = gguf_family(gf.architecture)
    meta = gf.small_metadata()
    meta["gguf.tensor_shapes"] = {n: t.shape for n, t in gf.tensors.items()}
    meta["gguf.small_tensors"] = {n: gf.dequantize(n) for n in CONFIG_TENSORS if n in gf.tensors}
    try:
        cfg = family.gguf_config(meta)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{gf.path}: {exc}") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{gf.path}: GGUF metadata does not describe a {family.name} model ({exc})") from exc
    return family, cfg


def gguf_state_dict(gf: GGUFFile, family, cfg: dict[str, Any]) -> dict[str, Any]:
    """Every weight, dequantized to float32 numpy under its Hugging Face name."""
    from ..arch.gguf_common import SKIP, hf_name

    unsupported = gf.unsupported_types()
    if unsupported:
        from .gguf_quants import SUPPORTED

        kinds = ", ".join(f"{k} ({len(v)} tensors, e.g. {v[0]})" for k, v in sorted(unsupported.items()))
        raise ModelLoadError(f"{gf.path}: quantization types edgeslm cannot dequantize: {kinds}; "
                             f"supported: {', '.join(SUPPORTED)}")
    out = {}
    for name in gf.tensors:
        target = hf_name(family.gguf_tensors, name)
        if target is None:
            raise ModelLoadError(f"{gf.path}: tensor '{name}' is not part of a {family.name} model as "
                                 "edgeslm knows it (a variant this family does not cover)")
        if target == SKIP:
            continue
        w = gf.dequantize(name)
        out[target] = family.gguf_fix(target, w, cfg) if family.gguf_fix else w
    return out


def gguf_tokenizer(gf: GGUFFile) -> Tokenizer:
    """The tokenizer the metadata describes, with the file's own special-token facts."""
    meta = gf.metadata
    kind = meta.get("tokenizer.ggml.model")
    if kind is None or "tokenizer.ggml.tokens" not in meta:
        raise ModelLoadError(f"{gf.path}: the GGUF file carries no tokenizer (tokenizer.ggml.*)")
    from transformers.integrations.gguf import convert_gguf_tokenizer

    tokens = gf.strings("tokenizer.ggml.tokens")
    tok: dict[str, Any] = {"tokenizer_type": kind, "tokens": tokens}
    for key, name in (("pre", "pre_tokenizer_type"), ("bos_token_id", "bos_token_id"),
                      ("eos_token_id", "eos_token_id"), ("unknown_token_id", "unk_token_id"),
                      ("padding_token_id", "pad_token_id"), ("add_space_prefix", "add_prefix_space")):
        if f"tokenizer.ggml.{key}" in meta:
            tok[name] = meta[f"tokenizer.ggml.{key}"]
    for key, name in (("scores", "scores"), ("token_type", "token_type")):
        if f"tokenizer.ggml.{key}" in meta:
            tok[name] = meta[f"tokenizer.ggml.{key}"].tolist()
    if isinstance(meta.get("tokenizer.ggml.merges"), (list, StringArray)):
        tok["merges"] = gf.strings("tokenizer.ggml.merges")
    try:
        backend, _ = convert_gguf_tokenizer(gf.architecture, tok)
    except Exception as exc:  # transformers raises ValueError/KeyError for vocabularies it cannot build
        raise ModelLoadError(f"{gf.path}: cannot build the '{kind}' tokenizer from the GGUF metadata ({exc})") from exc

    bos = meta.get("tokenizer.ggml.bos_token_id")
    # llama.cpp adds BOS to a sentencepiece vocabulary unless the file says otherwise
    add_bos = meta.get("tokenizer.ggml.add_bos_token", kind == "llama")
    eos = [int(meta[f"tokenizer.ggml.{k}"]) for k in ("eos_token_id", "eot_token_id", "eom_token_id")
           if meta.get(f"tokenizer.ggml.{k}") is not None]
    tokenizer = Tokenizer(backend=backend, bos_token_id=int(bos) if bos is not None else None,
                          eos_token_ids=tuple(dict.fromkeys(eos)), add_bos=bool(add_bos),
                          chat_template=meta.get("tokenizer.chat_template"))
    turn_end = _turn_end_id(tokenizer, tok.get("token_type"))
    if turn_end is not None and turn_end not in tokenizer.eos_token_ids:
        tokenizer.eos_token_ids = (*tokenizer.eos_token_ids, turn_end)
    return tokenizer


def _turn_end_id(tokenizer: Tokenizer, token_types: list[int] | None) -> int | None:
    """The special token the chat template writes right after an assistant message, if any."""
    if not tokenizer.chat_template:
        return None
    mark = "edgeslm turn-end probe"
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"},
                                              {"role": "assistant", "content": mark}], add_generation_prompt=False)
    except EdgeSLMError:
        return None  # a template that refuses this conversation shape says nothing about turn ends
    at = text.rfind(mark)
    if at < 0:
        return None
    ids = tokenizer.backend.encode(text[at + len(mark):], add_special_tokens=False).ids
    if not ids:
        return None
    first = ids[0]
    special = token_types[first] == _CONTROL if token_types and first < len(token_types) else False
    return first if special else None


def _build_module(cfg: dict[str, Any], state: dict[str, Any], path: Path):
    transformers = quiet_transformers()
    torch = require("torch", "export", "loading models")
    from transformers.initialization import no_init_weights

    try:
        config = transformers.AutoConfig.for_model(**cfg)
        with no_init_weights():  # every weight comes from the file; random init would cost seconds
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    except Exception as exc:
        raise ModelLoadError(f"{path}: transformers cannot build a '{cfg.get('model_type')}' model from the "
                             f"GGUF metadata ({' '.join(str(exc).split())[:300]})") from exc
    tensors = {k: torch.from_numpy(v) for k, v in state.items()}
    expected = model.state_dict()
    tied = bool(cfg.get("tie_word_embeddings")) and "lm_head.weight" not in tensors
    missing = [k for k in expected if k not in tensors and not (tied and k == "lm_head.weight")]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in tensors.items()
             if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"{what}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
                 for what, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)) if items]
        raise ModelLoadError(f"{path}: GGUF tensors do not fit the {cfg.get('model_type')} model ({'; '.join(parts)})")
    # assign: the parameters become the dequantized arrays themselves (no second fp32 copy)
    model.load_state_dict(tensors, strict=False, assign=True)
    if tied:
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    model.eval()
    return model


def load_gguf(path: str | Path, name: str | None = None) -> SourceModel:
    path = Path(path)
    gf = GGUFFile(path)
    family, cfg = gguf_config(gf)  # an unsupported architecture stops here, before any weight is read
    state = gguf_state_dict(gf, family, cfg)
    tokenizer = gguf_tokenizer(gf)
    model = _build_module(cfg, state, path)

    from .hf import spec_from_config

    spec = spec_from_config(model.config, tokenizer, name=gf.metadata.get("general.name") or path.stem)
    return SourceModel(name=name or path.name, path=path, kind="gguf", spec=spec, tokenizer=tokenizer,
                       module=model, sha256=sha256_file(path))
