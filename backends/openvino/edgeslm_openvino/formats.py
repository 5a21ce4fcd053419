"""What the OpenVINO backend declares about its format (entry point ``edgeslm.formats``).

Imports neither openvino nor torch: `edgeslm fit` and the device agent read it anywhere. Its
precisions (fp32, int8, int4) are the core's generic ones.
"""

from edgeslm.plugins import FormatInfo

OPENVINO = FormatInfo(name="openvino", runtime="openvino", default_rank=20)
