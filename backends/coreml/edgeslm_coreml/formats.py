"""What the Core ML backend declares about its format (entry point ``edgeslm.formats``).

Imports neither coremltools nor torch: `edgeslm fit` and the device agent read it anywhere.
"""

from edgeslm.plugins import FormatInfo
from edgeslm.targets.precisions import PrecisionCost

COREML = FormatInfo(
    name="coreml",
    runtime="coremltools",
    default_rank=40,  # predicts only on Apple platforms: never the default elsewhere
    precisions={
        # 4-bit palettization: 4-bit indices into a 16-entry fp16 table per tensor; computes in fp16.
        "palettized": PrecisionCost(4, None, 0.0, 2, "4-bit palettized (Core ML), fp16 compute"),
    },
)
