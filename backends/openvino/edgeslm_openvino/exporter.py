"""Export the re-authored decoder to a stateful OpenVINO IR (``openvino_model.xml`` + ``.bin``).

::

    Decoder (torch) --ov.convert_model--> ov.Model                    (KV cache as graph IO)
        input_ids       i64 (1, seq)                 logits          f32 (1, vocab)
        past_key_{i}    f32 (1, kv, past, hd)   -->  present_key_{i} f32 (1, kv, past+seq, hd)
                        --make_stateful: Gather(past, beam_idx), apply_make_stateful_transformation,
                          an empty-cache initializer per ReadValue-->
    ov.Model: input_ids, beam_idx -> logits, one ReadValue/Assign variable per past/present pair,
              in the pattern the CPU plugin fuses into one stateful ScaledDotProductAttention
                        --nncf.compress_weights (int8 | int4)--> ov.save_model

A stateful export is also an OpenVINO GenAI model folder: the IR takes GenAI's extra inputs and
the tokenizer/detokenizer IRs are written next to it (``genai.py``; manifest ``interop``).

The stateful model keeps the cache inside the runtime (the way OpenVINO's own LLM pipelines
do), so a decode step moves one token id in and one logits row out. ``options={"stateful":
False}`` writes the plain IO model instead (the engine runs both; benchmarks compare them).
Export options (``ExportSpec.options``): ``stateful`` and the fields of
:class:`~edgeslm_openvino.compress.CompressionConfig` (``group_size``, ``ratio`` ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeslm._deps import require
from edgeslm.errors import ExportError
from edgeslm.exporting import Exporter, ExportSpec
from edgeslm.options import flag

from .compress import CompressionConfig, compress
from .genai import EXACT_PROPERTIES, add_genai_io, write_tokenizers

MODEL_FILE = "openvino_model.xml"
WEIGHTS_FILE = "openvino_model.bin"


class OpenVINOExporter(Exporter):
    name = "openvino"
    precisions = ("fp32", "int8", "int4")
    min_top1_agreement = {"fp32": 1.0, "int8": 0.95}  # int4 is recorded only

    def export(self, source, spec: ExportSpec, out_dir: Path, steps) -> dict[str, Any]:
        ov = require("openvino", "openvino", "OpenVINO export")
        stateful = flag(spec.options.get("stateful", True), "stateful", ExportError)
        cfg = CompressionConfig.from_options(spec.options)  # validate before minutes of work
        model = to_openvino(source, spec.context_length)
        if stateful:
            make_stateful(model)
            add_genai_io(model)  # the IO openvino_genai.LLMPipeline feeds (genai.py)
        fields: dict[str, Any] = {}
        if spec.precision != "fp32":
            with steps.step(f"Compressing weights with NNCF ({spec.precision})"):
                model, record = compress(model, spec.precision, cfg)
            record["tied_embeddings"] = bool(source.spec.tie_word_embeddings)  # embed_tokens is lm_head too
            fields["compression"] = record
        try:
            ov.save_model(model, str(out_dir / MODEL_FILE), compress_to_fp16=False)
        except Exception as exc:
            raise ExportError(f"openvino could not save the IR: {exc}") from exc
        if stateful:
            fields["interop"] = {"openvino-genai": _genai_files(source, out_dir, steps)}
        fields["artifacts"] = {"model": MODEL_FILE, "weights": WEIGHTS_FILE, "stateful": stateful,
                               "openvino_version": ov.get_version()}
        return fields


def to_openvino(source, context_length: int | None = None):
    """Convert ``source.export_module()`` with openvino's PyTorch front end; name and shape its IO."""
    torch = require("torch", "export", "OpenVINO export")
    ov = require("openvino", "openvino", "OpenVINO export")
    from edgeslm.arch.concat import example_inputs, io_names

    ms = source.spec
    module = source.export_module(context_length)
    try:
        with torch.no_grad():
            model = ov.convert_model(module, example_input=example_inputs(module))
    except Exception as exc:
        raise ExportError(f"ov.convert_model failed: {type(exc).__name__}: {exc}") from exc
    in_names, out_names = io_names(ms.num_layers)
    if len(model.inputs) != len(in_names) or len(model.outputs) != len(out_names):
        raise ExportError(f"converted model has {len(model.inputs)} inputs / {len(model.outputs)} outputs, "
                          f"expected {len(in_names)} / {len(out_names)}")
    for port, name in zip(model.inputs, in_names):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, out_names):
        port.get_tensor().set_names({name})
    shapes = {"input_ids": ov.PartialShape([1, -1])}
    for i, block in enumerate(ms.description.blocks):  # (1, kv_heads, past, head_dim), per layer
        kv = ov.PartialShape([1, block.attention.num_kv_heads, -1, block.attention.head_dim])
        shapes[f"past_key_{i}"] = shapes[f"past_value_{i}"] = kv
    model.reshape(shapes)
    return model


def make_stateful(model) -> None:
    """Turn every past_*/present_* pair into an internal variable, in the shape the CPU plugin's
    stateful-SDPA fusion (``StatefulSDPAFusion``) matches::

        ReadValue(init: zeros (1, kv, 0, hd)) -> Gather(beam_idx, axis 0) -> Concat(past, new) -> [GQA] -> SDPA
                                                                               Concat -> Assign

    The plugin then runs one ``ScaledDotProductAttention`` node that owns the cache (appends in
    place, no Concat copy of the whole cache per step, and ``KV_CACHE_PRECISION`` applies). Both
    the ``beam_idx`` Gather and the ReadValue initializer are required: without the Gather the
    matcher does not fire (attention is decomposed to MatMul + Softmax and the cache grows by a
    Concatenation); with the Gather but an initializer-less ReadValue the 2026.4 CPU plugin fails
    to compile ("ReadValue ... contains less parent edges than 0").
    """
    import openvino as ov
    from openvino import opset13 as ops
    from openvino._offline_transformations import apply_make_stateful_transformation

    beam_idx = ops.parameter(ov.PartialShape([-1]), ov.Type.i32, name="beam_idx")  # GenAI feeds it (genai.py)
    beam_idx.output(0).get_tensor().set_names({"beam_idx"})
    axis = ops.constant(np.int64(0))
    pairs = {}
    for param in model.get_parameters():
        name = param.output(0).get_any_name()
        if not name.startswith("past_"):
            continue
        pairs[name] = "present_" + name[len("past_"):]
        # only the cache concat reads the reordered past; ShapeOf (the past length) stays on the state
        concats = [t for t in param.output(0).get_target_inputs() if t.get_node().get_type_name() == "Concat"]
        reordered = ops.gather(param, beam_idx, axis)
        for target in concats:
            target.replace_source_output(reordered.output(0))
    model.add_parameters([beam_idx])
    model.validate_nodes_and_infer_types()
    apply_make_stateful_transformation(model, pairs)
    for op in model.get_ops():  # an empty cache as each variable's initial value: (1, kv, 0, hd)
        if op.get_type_name() == "ReadValue" and op.get_input_size() == 0:
            dims = [d.get_length() if d.is_static else 0 for d in op.get_output_partial_shape(0)]
            zero = ops.constant(np.zeros((), dtype=op.get_output_element_type(0).to_dtype()))
            op.set_arguments([ops.broadcast(zero, ops.constant(np.array(dims, dtype=np.int64)))])
    model.validate_nodes_and_infer_types()
    if [p.get_any_name() for p in model.inputs] != ["input_ids", "beam_idx"]:
        raise ExportError("making the KV cache stateful left cache inputs behind")


def _genai_files(source, out_dir: Path, steps) -> dict[str, Any]:
    """Write the tokenizer IRs LLMPipeline needs; a missing openvino-tokenizers is recorded, not fatal."""
    try:
        with steps.step("Writing the OpenVINO GenAI tokenizer IRs"):
            files = write_tokenizers(source.tokenizer, out_dir)
    except Exception as exc:  # openvino-tokenizers absent or a tokenizer it cannot convert
        return {"written": False, "reason": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
    return {"written": True, "files": files, "open_with": "openvino_genai.LLMPipeline(bundle_dir, 'CPU')",
            "exact_properties": EXACT_PROPERTIES}
