"""Optional heavy dependencies, imported only where used.

``require("torch", extra="export")`` returns the module or raises
:class:`~edgeslm.errors.BackendNotInstalledError` naming the pip extra to install. A device
install (numpy + tokenizers + one runtime) never reaches these imports.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import BackendNotInstalledError


def require(module: str, extra: str, purpose: str = "") -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised only where the extra is absent
        what = f" for {purpose}" if purpose else ""
        raise BackendNotInstalledError(
            f"'{module}' is needed{what} but is not installed: pip install 'edgeslm[{extra}]'"
            f" ({exc})"
        ) from exc


def quiet_transformers():
    """Import transformers with its progress bars and advisory warnings off (we show our own)."""
    transformers = require("transformers", "export", "loading models")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def quiet_torch_onnx() -> None:
    """torch.onnx logs every stage and warns about optional torchvision ops; keep errors only."""
    import logging
    import warnings

    for name in ("torch.onnx", "torch.onnx._internal.exporter", "torch._dynamo", "torch.export", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
