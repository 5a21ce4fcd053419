"""Device targets as data: profiles, the search path that finds them, and the fit forecast.

>>> from edgeslm.targets import load_target, forecast     # doctest: +SKIP
>>> pi = load_target("raspberry-pi-5")                    # doctest: +SKIP
>>> forecast(spec, pi, "onnx", "fp32", 2048).fits          # doctest: +SKIP
True
"""

from .catalog import ENV_VAR, builtin_dir, list_targets, load_target, search_path, target_files, user_dir
from .fit import Forecast, forecast, largest_context, refuse
from .profile import (
    MissingFieldError,
    TargetFileError,
    TargetProfile,
    UnitError,
    UnknownFormatError,
    UnknownPrecisionError,
    UnknownTargetError,
    load_target_file,
)

__all__ = [
    "ENV_VAR", "Forecast", "MissingFieldError", "TargetFileError", "TargetProfile", "UnitError",
    "UnknownFormatError", "UnknownPrecisionError", "UnknownTargetError", "builtin_dir", "forecast",
    "largest_context", "list_targets", "load_target", "load_target_file", "refuse", "search_path",
    "target_files", "user_dir",
]
