"""The model layer: a decoder described as data, one torch implementation, families as mappers.

- :mod:`edgeslm.arch.config`: :class:`DecoderConfig` (per-layer :class:`BlockConfig`), torch-free;
  stored in every bundle manifest.
- :mod:`edgeslm.arch.families`: one module per family maps a Hugging Face config / GGUF
  metadata to a description (llama, mistral, qwen2, qwen3, gemma2, gemma3, phi3, ...).
- :mod:`edgeslm.arch.decoder`: the single torch decoder (Hugging Face weight names) with a
  pluggable KV-cache strategy; backends add only their strategy (:mod:`edgeslm.arch.concat` for
  ONNX/OpenVINO, static slots in LiteRT, state buffers in Core ML).

Converters choke on different corners of the stock transformers modules, so exports go through
this decoder, loaded from the *same* weights as the source and checked against transformers in
tests (tests/arch). See docs/DESIGN.md, "The model layer".
"""

from __future__ import annotations


def supported_families() -> list[str]:
    from .families import supported_names

    return supported_names()


def check_supported(model_type: str):
    """The :class:`~edgeslm.arch.families.Family` for a Hugging Face ``model_type``, or
    UnsupportedArchitectureError naming the supported families."""
    from .families import for_model_type

    return for_model_type(model_type)
