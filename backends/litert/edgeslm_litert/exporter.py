"""Export the re-authored decoder to one ``model.tflite`` with ``prefill`` and ``decode`` signatures.

::

    Decoder (torch) + StaticCache strategy (fixed KV cache of C rows, see static_cache.py)
        --litert_torch.signature("prefill", T tokens).signature("decode", 1 token).convert()-->
    model.tflite (fp32)  --ai_edge_quantizer recipe (dynamic_wi8_afp32 | weight_only_wi8_afp32)-->
    model.tflite (int8 weights)

Both signatures take ``tokens`` int32 (1, T), ``input_pos`` int32 (T,) and the cache
``kv_cache_k_{i}`` / ``kv_cache_v_{i}`` float32 (1, kv, C, hd); both return the updated cache, and ``decode``
also ``logits`` float32 (1, 1, V). ``prefill`` returns no logits: the engine prefills all prompt
tokens but the last and decodes that one.

Options (``ExportSpec.options``): ``prefill_len`` (default 64, at most the context length);
``litert_lm`` (default true): also pack ``model.litertlm`` for LiteRT-LM (litertlm_file.py).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from edgeslm._deps import require
from edgeslm.errors import ExportError
from edgeslm.exporting import Exporter, ExportSpec

MODEL_FILE = "model.tflite"
#: edgeslm precision -> ai-edge-quantizer recipe function
RECIPES = {"dynamic-int8": "dynamic_wi8_afp32", "weight-only-int8": "weight_only_wi8_afp32"}
DEFAULT_PREFILL_LEN = 64


class LiteRTExporter(Exporter):
    name = "litert"
    precisions = ("fp32", "dynamic-int8", "weight-only-int8")
    #: the issue's bars: fp32 exact, int8 >= 85% greedy top-1 (SmolLM2 measured 88% / 94%)
    min_top1_agreement = {"fp32": 1.0, "dynamic-int8": 0.85, "weight-only-int8": 0.85}

    def export(self, source, spec: ExportSpec, out_dir: Path, steps) -> dict[str, Any]:
        prefill_len = int(spec.options.get("prefill_len", DEFAULT_PREFILL_LEN))
        prefill_len = min(prefill_len, spec.context_length)
        if prefill_len < 1:
            raise ExportError(f"prefill_len must be >= 1, got {prefill_len}")
        path = out_dir / MODEL_FILE
        with steps.step(f"Converting with litert-torch (prefill {prefill_len}, decode 1, KV cache "
                        f"{spec.context_length})"):
            convert(source, path, spec.context_length, prefill_len)
        fields: dict[str, Any] = {}
        if spec.precision != "fp32":
            with steps.step(f"Quantizing with ai-edge-quantizer ({spec.precision})"):
                fields["quantization"] = quantize(path, spec.precision)
        if _flag(spec.options.get("litert_lm", True)):
            fields["interop"] = {"litert-lm": _litertlm(path, source, spec, steps)}
        from importlib.metadata import version

        fields["artifacts"] = {
            "model": MODEL_FILE,
            "signatures": {"prefill": {"tokens": prefill_len}, "decode": {"tokens": 1}},
            "kv_cache": {"length": spec.context_length, "dtype": "float32",
                         "shape": [1, source.spec.num_kv_heads, spec.context_length, source.spec.head_dim]},
            "converter": f"litert-torch {version('litert-torch')}",
        }
        return fields


def _litertlm(path: Path, source, spec: ExportSpec, steps) -> dict[str, Any]:
    """model.litertlm for LiteRT-LM (litertlm_file.py); a failure is recorded, not fatal."""
    from .litertlm_file import LITERTLM_FILE, write_litertlm

    try:
        with steps.step("Packing model.litertlm for LiteRT-LM"):
            record = write_litertlm(path, source.tokenizer, spec.context_length, path.parent / LITERTLM_FILE)
    except Exception as exc:
        (path.parent / LITERTLM_FILE).unlink(missing_ok=True)
        return {"written": False, "reason": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
    return {"written": True, "files": [LITERTLM_FILE], "open_with": "litert_lm.Engine(bundle_dir / 'model.litertlm', "
            "cache_dir=<outside the bundle>)", **record}


def _flag(value) -> bool:
    return value.lower() in ("1", "true", "yes") if isinstance(value, str) else bool(value)


def convert(source, path: Path, cache_len: int, prefill_len: int) -> None:
    """Write the fp32 two-signature .tflite of ``source`` to ``path``."""
    torch = require("torch", "export", "LiteRT export")
    litert_torch = _litert_torch()
    from .static_cache import DecodeSignature, PrefillSignature, StaticCacheModel, signature_cache_names

    core = StaticCacheModel(source.export_module(cache_len), cache_len).eval()
    names = signature_cache_names(core.layers)

    def sample(t: int) -> dict[str, Any]:
        return {"tokens": torch.zeros((1, t), dtype=torch.int32), "input_pos": torch.arange(t, dtype=torch.int32),
                **dict(zip(names, core.empty_cache()))}

    try:
        with torch.no_grad():
            edge = (litert_torch.signature("prefill", PrefillSignature(core), sample_kwargs=sample(prefill_len))
                    .signature("decode", DecodeSignature(core), sample_kwargs=sample(1))
                    .convert())
        edge.export(str(path))
    except Exception as exc:
        raise ExportError(f"litert-torch conversion failed: {type(exc).__name__}: {exc}") from exc


def quantize(path: Path, precision: str) -> dict[str, Any]:
    """Rewrite ``path`` in place with int8 weights by an ai-edge-quantizer recipe."""
    require("ai_edge_quantizer", "litert", "LiteRT quantization")
    from ai_edge_quantizer import quantizer, recipe

    name = RECIPES[precision]
    before = path.stat().st_size
    q = quantizer.Quantizer(str(path))
    q.load_quantization_recipe(getattr(recipe, name)())
    tmp = path.with_suffix(".q.tflite")
    q.quantize().export_model(str(tmp), overwrite=True)
    os.replace(tmp, path)
    return {"library": "ai-edge-quantizer", "recipe": name, "bytes_before": before, "bytes_after": path.stat().st_size}


def _litert_torch():
    """Import litert_torch quietly (it logs every conversion stage at INFO)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    mod = require("litert_torch", "litert", "LiteRT export (pip install --no-deps litert-torch==0.10.0 "
                  "litert-converter==0.5.0; see docs/backends/litert.md)")
    for name in ("litert_torch", "absl", "jax"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return mod
