"""Make an ONNX bundle a folder that ``onnxruntime_genai.Model(bundle_dir)`` opens.

onnxruntime-genai reads ``genai_config.json``; its input/output names are configurable
(``past_key_%d`` ...), and it feeds ``attention_mask`` / ``position_ids`` only when the graph has
them (ours computes positions and the mask from the cache length). What it cannot take is our
``logits (1, V)``: it binds logits as ``(batch, seq, vocab)`` and refuses rank 2 ("Invalid rank
for output: logits"). A rank-3 ``(1, 1, V)`` output of the last position is accepted, so::

    model.onnx        input_ids, past_* -> logits (1, V), present_*        our engine
    model_genai.onnx  the same graph + Unsqueeze -> logits (1, 1, V)       onnxruntime-genai
    model.onnx.data   the weights, shared: both graphs point at the same external-data offsets
    genai_config.json sizes, IO names, bos/eos/pad ids, search defaults (greedy)
    tokenizer_config.json  what onnxruntime-extensions' tokenizer reads next to tokenizer.json

``model_genai.onnx`` is a few hundred KB of graph, no second copy of the weights. Its cache is
the plain concat cache (``past_present_share_buffer: false``): our graph returns ``past + seq``.

Graph-writer bundles (GroupQueryAttention, one KV buffer bound as past and present) get the same
files with ``past_present_share_buffer: true``, like onnxruntime-genai's own builder writes for
GQA models. The writer's graph takes ``seqlens_k`` / ``total_sequence_length``; genai feeds
``attention_mask`` (int64 (1, total)), so ``model_genai.onnx`` computes them in front::

    attention_mask ─ ReduceSum(axis 1) - 1 ─ Cast int32 ─ seqlens_k              (1,)
                   ─ Shape ─ Gather(1) ─ Cast int32 ─ total_sequence_length      ()

and its KV dims are symbolic (genai allocates the buffer at its own ``max_length``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeslm._deps import require

GENAI_MODEL = "model_genai.onnx"
GENAI_CONFIG = "genai_config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"


def write_genai_files(model_path: Path, source, context_length: int, shared_buffer: bool = False) -> list[str]:
    """Write model_genai.onnx, genai_config.json and tokenizer_config.json beside ``model_path``;
    ``shared_buffer``: the graph writer's model (GQA, length inputs computed from attention_mask)."""
    onnx = require("onnx", "onnx", "onnxruntime-genai files")
    import numpy as np

    out_dir = model_path.parent
    graph = onnx.load(str(model_path), load_external_data=False)  # external-data refs stay as they are
    if shared_buffer:
        _mask_front_end(onnx, np, graph)
    _unsqueeze_logits(onnx, np, graph, source.spec.vocab_size)
    onnx.save(graph, str(out_dir / GENAI_MODEL))
    config = genai_config(source, context_length, shared_buffer)
    (out_dir / GENAI_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / TOKENIZER_CONFIG).write_text(json.dumps(tokenizer_config(source.tokenizer), indent=2) + "\n")
    return [GENAI_MODEL, GENAI_CONFIG, TOKENIZER_CONFIG]


def _unsqueeze_logits(onnx, np, graph, vocab: int) -> None:
    """logits (1, V) -> (1, 1, V): rename the producer's output and add one Unsqueeze."""
    out = next(o for o in graph.graph.output if o.name == "logits")
    for node in graph.graph.node:
        for i, name in enumerate(node.output):
            if name == "logits":
                node.output[i] = "logits_last"  # (1, V)
    graph.graph.initializer.append(onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), "genai_seq_axis"))
    graph.graph.node.append(onnx.helper.make_node("Unsqueeze", ["logits_last", "genai_seq_axis"], ["logits"]))
    shape = out.type.tensor_type.shape
    shape.ClearField("dim")
    for dim in (1, 1, vocab):  # (batch, seq=last position, vocab)
        shape.dim.add().dim_value = dim


def _mask_front_end(onnx, np, graph) -> None:
    """Graph writer's inputs seqlens_k / total_sequence_length -> computed from attention_mask."""
    from onnx import TensorProto, helper

    g = graph.graph
    lengths = ("seqlens_k", "total_sequence_length")
    kept = [i for i in g.input if i.name not in lengths]
    if len(kept) != len(g.input) - 2:
        raise ValueError(f"the graph has no {' / '.join(lengths)} inputs (not the graph writer's)")
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, "total_sequence_length"])
    del g.input[:]
    g.input.extend([kept[0], mask, *kept[1:]])  # input_ids, attention_mask, past_*
    for vi in [*g.input, *g.output]:  # KV buffers: genai allocates them at its max_length
        if vi.name.startswith(("past_", "present_")):
            vi.type.tensor_type.shape.dim[2].ClearField("dim_value")
            vi.type.tensor_type.shape.dim[2].dim_param = "max_length"
    g.initializer.extend([onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), "genai_axis_1"),
                          onnx.numpy_helper.from_array(np.array(1, dtype=np.int64), "genai_index_1")])
    front = [
        helper.make_node("ReduceSum", ["attention_mask", "genai_axis_1"], ["genai_mask_sum"], keepdims=0,
                         name="genai_mask_sum"),  # (1,)
        helper.make_node("Sub", ["genai_mask_sum", "genai_axis_1"], ["genai_seqlens_k"], name="genai_seqlens_k"),
        helper.make_node("Cast", ["genai_seqlens_k"], ["seqlens_k"], to=TensorProto.INT32, name="seqlens_k"),
        helper.make_node("Shape", ["attention_mask"], ["genai_mask_shape"], name="genai_mask_shape"),
        helper.make_node("Gather", ["genai_mask_shape", "genai_index_1"], ["genai_total"], axis=0,
                         name="genai_total"),  # ()
        helper.make_node("Cast", ["genai_total"], ["total_sequence_length"], to=TensorProto.INT32,
                         name="total_sequence_length"),
    ]
    nodes = [*front, *g.node]
    del g.node[:]
    g.node.extend(nodes)


def genai_config(source, context_length: int, shared_buffer: bool = False) -> dict[str, Any]:
    s, tok = source.spec, source.tokenizer
    eos = list(tok.eos_token_ids)
    return {
        "model": {
            # "llama": onnxruntime-genai's plain decoder-only model; every family's specifics
            # (sliding windows, soft-caps, norms) are inside our graph, not in genai's code paths
            "type": "llama",
            "context_length": int(context_length),
            "vocab_size": int(s.vocab_size),
            "bos_token_id": tok.bos_token_id if tok.bos_token_id is not None else (eos[0] if eos else 0),
            "eos_token_id": eos,
            "pad_token_id": eos[0] if eos else 0,
            "decoder": {
                "filename": GENAI_MODEL,
                "num_hidden_layers": int(s.num_layers),
                "num_attention_heads": int(s.num_heads),
                "num_key_value_heads": int(s.num_kv_heads),
                "head_size": int(s.head_dim),
                "hidden_size": int(s.hidden_size),
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "inputs": {"input_ids": "input_ids", "past_key_names": "past_key_%d",
                           "past_value_names": "past_value_%d",
                           **({"attention_mask": "attention_mask"} if shared_buffer else {})},
                "outputs": {"logits": "logits", "present_key_names": "present_key_%d",
                            "present_value_names": "present_value_%d"},
            },
        },
        "search": {"do_sample": False, "max_length": int(context_length), "num_beams": 1, "num_return_sequences": 1,
                   "past_present_share_buffer": bool(shared_buffer), "top_k": 1, "top_p": 1.0, "temperature": 1.0,
                   "repetition_penalty": 1.0, "early_stopping": True, "min_length": 0, "length_penalty": 1.0,
                   "no_repeat_ngram_size": 0, "diversity_penalty": 0.0},
    }


def tokenizer_config(tok) -> dict[str, Any]:
    """transformers-style tokenizer_config.json: BOS only when the model says add_bos, as our Tokenizer."""
    backend = tok.backend
    bos = backend.id_to_token(tok.bos_token_id) if tok.bos_token_id is not None else None
    eos = backend.id_to_token(tok.eos_token_ids[0]) if tok.eos_token_ids else None
    cfg: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": bool(tok.add_bos),
                           "add_eos_token": False, "bos_token": bos, "eos_token": eos,
                           "clean_up_tokenization_spaces": False}
    if tok.chat_template:
        cfg["chat_template"] = tok.chat_template
    return cfg


def vendor_check(bundle, prompt_ids: list[int], ours: list[int]) -> dict[str, Any]:
    """onnxruntime-genai on the bundle: its greedy tokens vs ``ours`` (genai stops at EOS: ours are cut there)."""
    import numpy as np
    import onnxruntime_genai as og  # ImportError: not installed

    model = og.Model(str(bundle.path))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt_ids) + len(ours), do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(np.array([prompt_ids], dtype=np.int32))
    theirs: list[int] = []
    while not gen.is_done() and len(theirs) < len(ours):
        gen.generate_next_token()
        theirs.append(int(gen.get_next_tokens()[0]))
    eos = set(bundle.load_tokenizer().eos_token_ids)  # what genai_config.json names
    cut = next((i + 1 for i, t in enumerate(ours) if t in eos), len(ours))
    return {"passed": theirs == list(ours[:cut]), "tokens": cut, "theirs": theirs}
