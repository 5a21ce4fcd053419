"""Core ML exporter: a stateful ``model.mlpackage`` (ML Program, iOS 18 / macOS 15, fp16 compute).

::

    source weights --from_source--> CoreMLDecoder (fixed-size cache buffers) --jit.trace--> ScriptModule
        --ct.convert (StateType caches, RangeDim seq/end, FLOAT16)--> MLModel
        --coremltools.optimize (int8 | int4 | palettized)--> model.mlpackage
        --inspect_package / check_package--> manifest "coreml" section (spec facts, sizes)

Verification on Linux, where Core ML cannot predict:
  1. parity: the pipeline runs the *traced* module (the exact graph ct.convert consumed) in fp32
     against the source through :meth:`parity_engine`; it must agree 100% (greedy top-1)
     whatever the weight precision, because it checks the graph, not the compression;
  2. the saved package is read back: inputs, outputs, states, op counts, the constexpr ops that
     prove the compression, bytes -> ``manifest["coreml"]``; any mismatch fails the export;
  3. emulation (``options["emulate"]``, default on): the module in fp16 with the weights
     dequantized from the saved package -> ``manifest["verification"]["emulation"]`` (recorded).
Real prediction needs macOS: backends/coreml/tests (marked ``macos``) and the iOS runner.

Options (``ExportSpec.options``): ``block_size``, ``palette_bits``, ``palette_group_size``,
``weight_threshold`` (see :class:`~edgeslm_coreml.convert.CompressionConfig`), ``emulate``,
``emulation_tokens``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from edgeslm._deps import require
from edgeslm.errors import ExportError
from edgeslm.exporting import Exporter, ExportSpec

from .convert import (CAUSAL_MASK, INPUT_IDS, KEY_CACHE, LOGITS, VALUE_CACHE, CompressionConfig, compress, convert,
                      quiet_coremltools)

MODEL_DIR = "model.mlpackage"
PRECISIONS = ("fp16", "int8", "int4", "palettized")


class CoreMLExporter(Exporter):
    name = "coreml"
    precisions = PRECISIONS
    #: the parity check runs the traced graph in fp32 with the source's weights: exact for every precision
    min_top1_agreement = {p: 1.0 for p in PRECISIONS}

    def __init__(self):
        self._parity_engine = None

    def parity_engine(self, bundle):
        """The traced torch module (Core ML cannot predict on the export machine)."""
        return self._parity_engine

    def export(self, source, spec: ExportSpec, out_dir: Path, steps) -> dict[str, Any]:
        require("torch", "export", "Core ML export")
        ct = quiet_coremltools()
        from .model import from_source, trace
        from .spec_check import check_package, inspect_package

        cfg = CompressionConfig.from_options(spec.options)  # validate before minutes of work
        ctx = spec.context_length
        with steps.step(f"Building the Core ML-friendly decoder (fixed cache of {ctx})"):
            module = from_source(source, ctx)
            traced = trace(module)
        with steps.step("Converting with coremltools (ML Program, iOS 18, fp16, KV cache as state)"):
            mlmodel = convert(traced, source.spec, ctx)
        fields: dict[str, Any] = {}
        if spec.precision != "fp16":
            with steps.step(f"Compressing weights with coremltools.optimize ({spec.precision})"):
                mlmodel, record = compress(mlmodel, spec.precision, cfg)
            record["tied_embeddings"] = bool(source.spec.tie_word_embeddings)  # embed_tokens is lm_head too
            fields["compression"] = record
        else:
            fields["compression"] = {"method": "none", "weights": "fp16"}
        path = out_dir / MODEL_DIR
        try:
            mlmodel.save(str(path))
        except Exception as exc:
            raise ExportError(f"coremltools could not save {MODEL_DIR}: {exc}") from exc
        with steps.step("Inspecting the saved package"):
            info = inspect_package(path)
            problems = check_package(info, source.spec, ctx, spec.precision, cfg.block_size, cfg.weight_threshold)
        if problems:
            raise ExportError(f"the saved {MODEL_DIR} is not what was exported: " + "; ".join(problems))
        self._parity_engine = _engine(traced, source.spec, ctx, "traced graph, fp32, source weights")
        info.pop("_compressed")
        info["checks"] = "passed"
        info["coremltools_version"] = ct.__version__
        fields["coreml"] = info
        fields["artifacts"] = {
            "model": MODEL_DIR, "files": sorted(p.name for p in out_dir.iterdir()),
            "inputs": [INPUT_IDS, CAUSAL_MASK], "outputs": [LOGITS], "states": [KEY_CACHE, VALUE_CACHE],
            "minimum_deployment_target": "iOS18/macOS15", "compute_precision": "fp16",
            "package_bytes": info["bytes"]["package"],
        }
        verification = {
            "parity": "the traced torch graph that ct.convert consumed, fp32, source weights (manifest 'parity')",
            "spec_checks": "passed (manifest 'coreml')",
            "prediction": "not run: Core ML predicts on macOS 15+/iOS 18+ only",
        }
        if _flag(spec.options.get("emulate", True)):
            with steps.step("Emulating the package in torch (fp16, weights read back from it)"):
                verification["emulation"] = emulate(module, path, source, ctx,
                                                    int(spec.options.get("emulation_tokens", 16)))
        fields["verification"] = verification
        return fields


def emulate(module, package: Path, source, ctx: int, tokens: int) -> dict[str, Any]:
    """Greedy agreement of the decoder in fp16 with the package's own (dequantized) weights."""
    import torch

    from edgeslm.verify.parity import reference_run, run_parity

    from .spec_check import expected_weights, stored_weights

    emu = copy.deepcopy(module)
    names = [n for n, p in emu.named_parameters() if p.dim() == 2]  # linear + embedding matrices
    stored = stored_weights(package, names)
    if len(stored) != expected_weights(source.spec):
        raise ExportError(f"read {len(stored)} weights back from {package.name}, expected "
                          f"{expected_weights(source.spec)}")
    with torch.no_grad():
        for name, value in stored.items():
            emu.get_parameter(name).copy_(torch.from_numpy(value))
    emu = emu.half()
    report = run_parity(_engine(emu, source.spec, ctx, "eager fp16, package weights", torch.float16),
                        reference_run(source, new_tokens=tokens))
    return {"what": "the decoder in torch fp16 on CPU with every weight dequantized from the saved package",
            "weights_read_back": len(stored), "tokens": report.tokens, "top1_agreement": report.top1_agreement,
            "kl_mean": report.kl_mean, "max_abs_logit_diff": report.max_abs_logit_diff}


def _engine(module, model_spec, ctx, label, dtype=None):
    from .torch_engine import TorchCoreMLEngine

    return TorchCoreMLEngine(module, model_spec, ctx, dtype=dtype, label=label)


def _flag(value) -> bool:
    return value.lower() in ("1", "true", "yes") if isinstance(value, str) else bool(value)
