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
