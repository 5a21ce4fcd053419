"""Pack the bundle's ``model.tflite`` into a ``model.litertlm`` that LiteRT-LM opens.

LiteRT-LM (``litert_lm.Engine(path)`` in Python on Linux, Kotlin on Android, Swift on iOS) reads
one ``.litertlm`` file: ``litert-lm-builder`` packs these sections::

    LlmMetadataProto   start token (only when the model adds BOS), stop tokens (every EOS id),
                       the Jinja chat template (+ a prologue for LiteRT-LM's list-of-parts
                       message contents), max_num_tokens = the bundle's context length
    TFLiteModel        model.tflite as is (prefill + decode signatures), type prefill_decode,
                       preferred activation fp32 (LiteRT-LM's default for text decoders is fp16)
    HF_Tokenizer       tokenizer.json, with a post-processor that adds nothing (BOS comes from
                       the start token), so both tokenize a prompt to the same ids

What LiteRT-LM's executor requires of the .tflite, and how ours meets it (static_cache.py):
signatures ``prefill``/``decode``; inputs ``tokens`` (1, T), ``input_pos`` (T,), the cache as
``kv_cache_k_{i}``/``kv_cache_v_{i}``; ``logits`` (batch, seq, vocab) from decode; a short prefill
padded with token 0 at position 0 (so rows are written to ``input_pos[0] + t``, never by the
pad's position). LiteRT-LM also prefills all but the last token and decodes that one, as ours.

Costs: the file holds a second copy of the .tflite (export option ``litert_lm=false`` skips it).
LiteRT-LM writes an XNNPACK weight cache next to the model unless given ``cache_dir``: point it
elsewhere, or the bundle's integrity check refuses the unlisted file.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from edgeslm._deps import require

LITERTLM_FILE = "model.litertlm"
#: LiteRT-LM's Conversation API hands the template each message's content as a list of parts
#: ([{"type": "text", "text": ...}]); Hugging Face templates such as SmolLM2's concatenate it as a
#: string ("tried to use + operator on unsupported types string and sequence"). This prologue
#: rewrites list contents to their joined text before the model's own template runs.
CONTENT_AS_TEXT = (
    "{%- set ns = namespace(msgs=[]) -%}"
    "{%- for m in messages -%}"
    "{%- if m['content'] is string -%}{%- set ns.msgs = ns.msgs + [m] -%}"
    "{%- else -%}{%- set ns.msgs = ns.msgs + [{'role': m['role'], "
    "'content': m['content'] | map(attribute='text') | join('')}] -%}"
    "{%- endif -%}{%- endfor -%}{%- set messages = ns.msgs -%}")


def write_litertlm(tflite: Path, tokenizer, context_length: int, out: Path) -> dict[str, Any]:
    """Write ``out`` (.litertlm) from ``tflite`` and our Tokenizer; return what went into it."""
    builder_mod = require("litert_lm_builder", "litert", "the .litertlm file")
    from litert_lm_builder.runtime.proto import llm_metadata_pb2

    meta = llm_metadata_pb2.LlmMetadata()
    if tokenizer.add_bos and tokenizer.bos_token_id is not None:
        meta.start_token.token_ids.ids.append(int(tokenizer.bos_token_id))
    for eos in tokenizer.eos_token_ids:
        meta.stop_tokens.add().token_ids.ids.append(int(eos))
    meta.max_num_tokens = int(context_length)
    if tokenizer.chat_template:
        meta.jinja_prompt_template = CONTENT_AS_TEXT + tokenizer.chat_template
    meta.llm_model_type.generic_model.SetInParent()
    with tempfile.TemporaryDirectory(prefix="edgeslm-litertlm-") as tmp:
        meta_path = Path(tmp) / "llm_metadata.pb"
        meta_path.write_bytes(meta.SerializeToString())
        tok_path = Path(tmp) / "tokenizer.json"
        _plain_backend(tokenizer).save(str(tok_path))
        builder = builder_mod.LitertLmFileBuilder()
        builder.add_llm_metadata(str(meta_path))
        builder.add_tflite_model(str(tflite), builder_mod.TfLiteModelType.PREFILL_DECODE,
                                 prefer_activation_type="fp32")
        builder.add_hf_tokenizer(str(tok_path))
        with open(out, "wb") as f:
            builder.build(f)
    return {"file": out.name, "start_token": list(meta.start_token.token_ids.ids),
            "stop_tokens": [int(t) for t in tokenizer.eos_token_ids], "max_num_tokens": int(context_length),
            "chat_template": bool(tokenizer.chat_template), "activation": "fp32"}


def _plain_backend(tokenizer):
    """A copy of the tokenizers.Tokenizer whose post-processor adds no special tokens."""
    import copy

    from tokenizers import processors

    backend = copy.deepcopy(tokenizer.backend)
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return backend


def vendor_check(bundle, prompt_ids: list[int], ours: list[int]) -> dict[str, Any]:
    """LiteRT-LM on model.litertlm: its greedy text vs ``ours`` (cut at a stop token) detokenized.

    Its Python API takes text, so the prompt is our ids decoded; a prompt whose text does not
    tokenize back to the same ids is reported as not comparable (passed None).
    """
    import shutil

    import litert_lm  # ImportError: not installed
    from litert_lm import interfaces

    text = bundle.load_tokenizer().decode(prompt_ids, skip_special_tokens=False)
    cache_dir = tempfile.mkdtemp(prefix="edgeslm-litertlm-cache-")  # never inside the bundle
    engine = litert_lm.Engine(str(bundle.file(LITERTLM_FILE)), backend=interfaces.Backend.CPU(), cache_dir=cache_dir)
    try:
        if engine.tokenize(text) != list(prompt_ids):
            return {"passed": None, "reason": "the prompt text does not tokenize back to the same ids"}
        stops = {t for ids in engine.eos_token_ids for t in ids}
        cut = next((i for i, t in enumerate(ours) if t in stops), len(ours))
        session = engine.create_session(apply_prompt_template=False, max_output_tokens=len(ours),
                                        sampler_config=interfaces.SamplerConfig(top_k=1))
        session.run_prefill([text])
        theirs = session.run_decode().texts[0]
        session.close()
        return {"passed": theirs == engine.detokenize(list(ours[:cut])), "tokens": cut, "theirs_text": theirs}
    finally:
        engine.close()
        shutil.rmtree(cache_dir, ignore_errors=True)
