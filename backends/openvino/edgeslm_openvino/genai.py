"""Make an OpenVINO bundle a folder that ``openvino_genai.LLMPipeline(bundle_dir, "CPU")`` opens.

OpenVINO GenAI's stateful pipeline (its SDPA backend on CPU) needs, next to our own files:

::

    openvino_model.xml   inputs  input_ids      i64 (1, S)     our graph's only real input
                                 attention_mask i64 (1, P+S)   accepted, unused (batch 1: all ones)
                                 position_ids   i64 (1, S)     accepted, unused (positions come from P)
                                 beam_idx       i32 (1,)       reorders the cache (make_stateful): 0, one sequence
                         output  logits         f32 (1, 1, V)  last position only, as optimum's exports
    openvino_tokenizer.xml / openvino_detokenizer.xml          openvino-tokenizers, from tokenizer.json
    generation_config.json                                     bos / eos ids (every stop token)

``attention_mask`` and ``position_ids`` are Parameters with no consumers: the graph computes
positions and the causal mask from the cache length itself, which is what GenAI feeds for one
sequence. ``beam_idx`` is a real input, added by the exporter's ``make_stateful``: the CPU
plugin's stateful-SDPA fusion needs the cache read through ``Gather(past, beam_idx)``. Our
engine feeds all three (:func:`extra_inputs`), so one IR serves both runtimes and the parity
check covers it.
The tokenizer IR is converted with the post-processor that adds exactly what our Tokenizer adds
(BOS only when the model says ``add_bos``), so both tokenize a prompt to the same ids.

For exact parity with our engine, open the pipeline with the same precision hints
(:data:`EXACT_PROPERTIES`): the CPU plugin otherwise runs bf16 with a u8 KV cache on CPUs that
have AVX512-BF16.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgeslm._deps import require

TOKENIZER_FILE = "openvino_tokenizer.xml"
DETOKENIZER_FILE = "openvino_detokenizer.xml"
GENERATION_CONFIG = "generation_config.json"
GENAI_INPUTS = ("attention_mask", "position_ids", "beam_idx")
#: properties that make LLMPipeline compute what our engine's defaults compute
EXACT_PROPERTIES = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32", "ATTENTION_BACKEND": "SDPA"}


def add_genai_io(model) -> None:
    """Add GenAI's inputs to a stateful ``input_ids -> logits (1, V)`` model; logits -> (1, 1, V)."""
    import openvino as ov
    from openvino import opset13 as ops

    have = {p.get_any_name() for p in model.inputs}
    new = []
    for name, shape, dtype in (("attention_mask", [1, -1], ov.Type.i64), ("position_ids", [1, -1], ov.Type.i64),
                               ("beam_idx", [1], ov.Type.i32)):
        if name in have:
            continue
        param = ops.parameter(shape, dtype, name=name)
        param.output(0).get_tensor().set_names({name})
        new.append(param)
    if new:
        model.add_parameters(new)
    result = model.output("logits").get_node()
    if result.get_output_partial_shape(0).rank.get_length() == 2:  # (1, V) -> (1, 1, V)
        logits = result.input_value(0)
        unsqueezed = ops.unsqueeze(logits, ops.constant(np.array([1], dtype=np.int64)))
        result.input(0).replace_source_output(unsqueezed.output(0))
        result.output(0).get_tensor().set_names({"logits"})
    model.validate_nodes_and_infer_types()


def extra_inputs(names: set[str], position: int, seq: int) -> dict[str, np.ndarray]:
    """The values GenAI would feed for one sequence at ``position`` with ``seq`` new tokens."""
    feed: dict[str, np.ndarray] = {}
    if "attention_mask" in names:
        feed["attention_mask"] = np.ones((1, position + seq), dtype=np.int64)  # (1, P+S)
    if "position_ids" in names:
        feed["position_ids"] = np.arange(position, position + seq, dtype=np.int64)[None]  # (1, S)
    if "beam_idx" in names:
        feed["beam_idx"] = np.zeros((1,), dtype=np.int32)
    return feed


def write_tokenizers(tokenizer, out_dir: Path) -> list[str]:
    """Convert our Tokenizer to openvino-tokenizers IRs (+ generation_config.json); return the file names."""
    ov = require("openvino", "openvino", "OpenVINO GenAI tokenizer export")
    convert = require("openvino_tokenizers", "openvino", "OpenVINO GenAI tokenizer export").convert_tokenizer
    hf = to_transformers(tokenizer)
    ov_tok, ov_detok = convert(hf, with_detokenizer=True, skip_special_tokens=True)
    ov.save_model(ov_tok, str(out_dir / TOKENIZER_FILE))
    ov.save_model(ov_detok, str(out_dir / DETOKENIZER_FILE))
    gen = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": list(tokenizer.eos_token_ids),
           "do_sample": False}
    (out_dir / GENERATION_CONFIG).write_text(json.dumps(gen, indent=2) + "\n")
    return [TOKENIZER_FILE, TOKENIZER_FILE[:-4] + ".bin", DETOKENIZER_FILE, DETOKENIZER_FILE[:-4] + ".bin",
            GENERATION_CONFIG]


def to_transformers(tokenizer) -> Any:
    """A transformers fast tokenizer whose special tokens behave as our Tokenizer's do."""
    import copy

    require("transformers", "export", "OpenVINO GenAI tokenizer export")
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    backend = copy.deepcopy(tokenizer.backend)
    bos = backend.id_to_token(tokenizer.bos_token_id) if tokenizer.bos_token_id is not None else None
    eos = backend.id_to_token(tokenizer.eos_token_ids[0]) if tokenizer.eos_token_ids else None
    if tokenizer.add_bos and bos is not None:
        backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                               special_tokens=[(bos, tokenizer.bos_token_id)])
    else:  # adds nothing (our encode adds nothing either)
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    hf = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos)
    if tokenizer.chat_template:
        hf.chat_template = tokenizer.chat_template
    return hf


def vendor_check(bundle, prompt_ids: list[int], ours: list[int]) -> dict[str, Any]:
    """LLMPipeline on the bundle with EXACT_PROPERTIES: its greedy tokens vs ``ours`` (no EOS stop)."""
    import openvino as ov
    import openvino_genai as og  # ImportError: not installed

    pipe = og.LLMPipeline(str(bundle.path), "CPU", **EXACT_PROPERTIES)
    cfg = og.GenerationConfig()
    cfg.max_new_tokens, cfg.do_sample, cfg.ignore_eos = len(ours), False, True
    theirs = [int(t) for t in pipe.generate(ov.Tensor(np.array([prompt_ids], dtype=np.int64)), cfg).tokens[0]]
    return {"passed": theirs == list(ours), "tokens": len(ours), "theirs": theirs}
