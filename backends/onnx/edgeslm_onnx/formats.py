"""What the ONNX backend declares about its format (entry point ``edgeslm.formats``).

Imports neither onnxruntime nor torch: `edgeslm fit` and the device agent read it anywhere.
"""

from edgeslm.plugins import FormatInfo
from edgeslm.targets.precisions import PrecisionCost

ONNX = FormatInfo(
    name="onnx",
    runtime="onnxruntime",
    # ONNX runs on every CPU the project targets: the format `edgeslm export` writes by default.
    default_rank=10,
    precisions={
        # A GGUF's own Q4_1 blocks carried into MatMulNBits: block 32, fp32 scale + fp32 (float) zero point.
        "int4-gguf": PrecisionCost(4, 32, 8.0, 4, "GGUF Q4_1 blocks as MatMulNBits: fp32 scale and float zero point"),
        # The same layout, the blocks computed at export from float weights (Q4_1's min/scale grid).
        "int4-minmax": PrecisionCost(4, 32, 8.0, 4, "Q4_1-style blocks (float min) quantized at export, as MatMulNBits"),
    },
)
