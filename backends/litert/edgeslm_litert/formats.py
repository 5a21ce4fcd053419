"""What the LiteRT backend declares about its formats (entry point ``edgeslm.formats``).

Two formats: ``litert`` (prefill/decode .tflite bundles, ai-edge-litert) and ``tflite-micro``
(full-int8 micro models for microcontrollers, built by `edgeslm micro`). Imports neither the
runtime nor torch: `edgeslm fit` and the device agent read it anywhere.
"""

from edgeslm.plugins import FormatInfo
from edgeslm.targets.precisions import PrecisionCost

# Per-channel fp32 scales; activations and the KV cache stay float32.
WEIGHT_ONLY_INT8 = PrecisionCost(8, None, 4.0, 4, "LiteRT weight-only int8, fp32 activations")
DYNAMIC_INT8 = PrecisionCost(8, None, 4.0, 4, "LiteRT dynamic-range int8, fp32 activations")
# Full int8 (TFLite Micro): activations and KV are int8 too.
FULL_INT8 = PrecisionCost(8, None, 4.0, 1, "int8 weights and activations (MCUs)")

LITERT = FormatInfo(name="litert", runtime="ai-edge-litert", default_rank=30,
                    precisions={"weight-only-int8": WEIGHT_ONLY_INT8, "dynamic-int8": DYNAMIC_INT8})

TFLITE_MICRO = FormatInfo(
    name="tflite-micro", runtime="tflite-micro", precisions={"full-int8": FULL_INT8},
    small_model_hint="`edgeslm micro --teacher BUNDLE --text FILE -o DIR` builds one")
