"""Export-friendly re-authorings of the model architectures edgeslm supports.

Converters (torch.onnx dynamo, OpenVINO, coremltools, litert-torch) each choke on different
corners of the stock Hugging Face modules (dynamic caches, data-dependent Python ints, ``aten::diff``
in mask building). Each architecture is therefore written once here as a plain torch module with
an explicit KV cache in its signature, loaded from the *same* weights as the source model, and
checked against the Hugging Face implementation in tests. See docs/DESIGN.md.
"""

from __future__ import annotations

from ..errors import UnsupportedArchitectureError

#: Hugging Face ``model_type`` -> how attention projections look. Everything else is Llama.
SUPPORTED = {
    "llama": {"attention_bias": False},
    "mistral": {"attention_bias": False},
    "qwen2": {"attention_bias": True},
}


def check_supported(architecture: str) -> dict:
    try:
        return SUPPORTED[architecture]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"architecture '{architecture}' is not supported; supported: {', '.join(sorted(SUPPORTED))}"
        ) from None
