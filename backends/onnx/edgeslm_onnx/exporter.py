"""Export the decoder to ONNX: written directly from the description (graph writer, default
where it applies) or through torch.onnx's dynamo exporter (``--option graph=torch``).

``graph=writer`` (:mod:`.graph_writer`): onnxruntime contrib ops (GroupQueryAttention with
rotary inside and the KV cache as one preallocated buffer written in place,
SkipSimplifiedLayerNormalization, packed projections, MatMulNBits on the GGUF's own blocks);
fp32, int4-gguf and int4-minmax (float weights put on Q4_1's min/scale blocks here, written
like int4-gguf's). ``graph=auto`` (the default) uses it for those precisions when the model
fits the contrib ops and falls back to torch otherwise, recording the reason in the manifest
(``artifacts.graph``). Its IO is documented in :mod:`.graph_writer`.

Torch graph IO (names fixed; the engine relies on them)::

    input_ids        int64   (1, seq)
    past_key_{i}     float32 (1, kv_heads, past, head_dim)     i = 0..layers-1, also past_value_{i}
 -> logits           float32 (1, vocab)                         after the last input token
    present_key_{i}  float32 (1, kv_heads, past + seq, head_dim)

Weights go to ``model.onnx.data`` (external data) so the graph file stays small.
``model_genai.onnx`` + ``genai_config.json`` (``genai.py``) let onnxruntime-genai open the bundle too
(both graphs; the writer's with a shared KV buffer and an attention_mask front-end).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

from edgeslm._deps import quiet_torch_onnx, require
from edgeslm.errors import ExportError
from edgeslm.exporting import Exporter, ExportSpec
from edgeslm.options import flag

from .graph_writer import Unsupported as WriterUnsupported

MODEL_FILE = "model.onnx"
OPSET_FUSED = 23
OPSET_PLAIN = 20


class OnnxExporter(Exporter):
    name = "onnx"
    precisions = ("fp32", "int8", "int4", "int4-gguf", "int4-minmax")
    #: fp32 must match exactly. int4-gguf carries the GGUF's own weights; with the default
    #: accuracy_level 4 (int8 activations in the 4-bit kernel) SmolLM2 agrees 96.9% with its
    #: fp32 source, with accuracy_level=0 (fp32 compute, ~10x slower here) 99.0%.
    min_top1_agreement = {"fp32": 1.0, "int4-gguf": 0.95}

    def export(self, source, spec: ExportSpec, out_dir: Path, steps) -> dict[str, Any]:
        graph = str(spec.options.get("graph", "auto")).lower()
        if graph not in ("auto", "writer", "torch"):
            raise ExportError(f"option graph={graph!r}: expected auto, writer or torch")
        if graph == "torch" and spec.precision == "int4-minmax":
            raise ExportError("precision int4-minmax is written by the graph writer only (graph=auto or writer)")
        reason = None
        if graph == "auto" and "fused_ops" in spec.options:  # an option of the torch export: the user means it
            graph, reason = "torch", "option fused_ops selects the torch export"
        if graph != "torch":
            from .writer_export import write_graph

            try:
                out = write_graph(source, spec, out_dir, steps)
                if out["artifacts"].get("custom_ops"):  # q4_1_offsets=fused
                    genai = {"written": False, "reason": "the graph uses edgeslm's custom ops (q4_1_offsets=fused); "
                                                         "onnxruntime-genai is not given their library"}
                else:
                    genai = _genai(out_dir / MODEL_FILE, source, spec, shared_buffer=True)
                out["interop"] = {"onnxruntime-genai": genai}
                out["artifacts"]["files"] = sorted(p.name for p in out_dir.iterdir())
                return out
            except WriterUnsupported as exc:
                if graph == "writer" or spec.precision == "int4-minmax":
                    raise ExportError(f"the graph writer cannot export this model: {exc}") from exc
                reason = str(exc)
        out = self._export_torch(source, spec, out_dir, steps)
        out["artifacts"]["graph"] = {"kind": "torch", **({"writer_unsupported": reason} if reason else {})}
        return out

    def _export_torch(self, source, spec: ExportSpec, out_dir: Path, steps) -> dict[str, Any]:
        torch = require("torch", "export", "ONNX export")
        require("onnxscript", "onnx", "ONNX export")
        from edgeslm.arch.concat import example_inputs, io_names

        # Opset 23 has Attention (grouped-query) and RMSNormalization: with the fused forward each
        # layer becomes a few large ops instead of ~40 small ones (decode is op-overhead bound).
        fused = flag(spec.options.get("fused_ops", True), "fused_ops", ExportError)
        model = source.export_module(spec.context_length).use_fused_ops(fused)
        opset = OPSET_FUSED if fused else OPSET_PLAIN
        example = example_inputs(model)
        in_names, out_names = io_names(source.spec.num_layers)
        seq = torch.export.Dim("seq", min=1, max=spec.context_length)
        past_len = torch.export.Dim("past", min=0, max=spec.context_length)
        dynamic = {"input_ids": {1: seq}, "past": tuple({2: past_len} for _ in example[1:])}
        path = out_dir / MODEL_FILE
        quiet_torch_onnx()
        log = io.StringIO()  # torch.onnx prints its stages; keep them for the error message only
        try:
            with torch.no_grad(), contextlib.redirect_stdout(log):
                torch.onnx.export(
                    model, example, str(path), dynamo=True, dynamic_shapes=dynamic,
                    input_names=in_names, output_names=out_names,
                    optimize=True, external_data=True, verbose=False, opset_version=opset)
        except Exception as exc:
            raise ExportError(f"torch.onnx export failed: {type(exc).__name__}: {exc}\n{log.getvalue()[-2000:]}") from exc
        fields: dict[str, Any] = {}
        if spec.precision != "fp32":
            with steps.step(f"Quantizing weights ({spec.precision})"):
                fields["quantization"] = _quantize(path, source, spec)
        fields["interop"] = {"onnxruntime-genai": _genai(path, source, spec)}
        return {"artifacts": {"model": MODEL_FILE, "opset": _opset(path)}, **fields}


def _genai(path: Path, source, spec: ExportSpec, shared_buffer: bool = False) -> dict[str, Any]:
    """The files onnxruntime_genai.Model(bundle_dir) reads (genai.py); a failure is recorded, not fatal."""
    from .genai import write_genai_files

    try:
        files = write_genai_files(path, source, spec.context_length, shared_buffer)
    except Exception as exc:
        return {"written": False, "reason": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
    return {"written": True, "files": files, "open_with": "onnxruntime_genai.Model(bundle_dir)"}


def _quantize(path: Path, source, spec: ExportSpec) -> dict[str, Any]:
    """Rewrite the fp32 graph at ``path`` in place with quantized weights."""
    from dataclasses import asdict

    onnx = require("onnx", "onnx", "ONNX quantization")
    from .quantize import requantize, transcode_gguf

    import logging

    for noisy in ("onnxruntime.quantization", "onnx_ir"):  # both log every node at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    accuracy_level = int(spec.options.get("accuracy_level", 4))
    model = onnx.load(str(path), load_external_data=True)
    if spec.precision == "int4-gguf":
        if source.kind != "gguf":
            raise ExportError("precision int4-gguf transcodes a GGUF's own 4-bit blocks; the source is not a GGUF "
                              "file (use int4 to quantize float weights)")
        model, report = transcode_gguf(model, str(source.path), source.spec.num_heads, source.spec.num_kv_heads,
                                       accuracy_level)
    else:
        model, report = requantize(model, bits=8 if spec.precision == "int8" else 4, accuracy_level=accuracy_level)
    for f in path.parent.glob(MODEL_FILE + "*"):
        f.unlink()
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=MODEL_FILE + ".data", size_threshold=1024)
    out = asdict(report)
    out["accuracy_level"] = accuracy_level
    return out


def _opset(path: Path) -> int | None:
    onnx = require("onnx", "onnx", "reading ONNX files")
    m = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
