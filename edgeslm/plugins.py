"""Find backends by name through entry points; built-in and third-party plugins alike.

A backend package declares, in its pyproject.toml::

    [project.entry-points."edgeslm.engines"]
    onnx = "edgeslm_onnx.engine:OnnxEngine"
    [project.entry-points."edgeslm.exporters"]
    onnx = "edgeslm_onnx.exporter:OnnxExporter"

and the core never names a backend in code.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from .errors import BackendNotInstalledError

ENGINES = "edgeslm.engines"
EXPORTERS = "edgeslm.exporters"


def available(group: str) -> list[str]:
    return sorted({ep.name for ep in entry_points(group=group)})


def load_plugin(group: str, name: str) -> Any:
    matches = [ep for ep in entry_points(group=group) if ep.name == name]
    if not matches:
        kind = "engine" if group == ENGINES else "exporter"
        have = ", ".join(available(group)) or "none"
        raise BackendNotInstalledError(
            f"no {kind} for format '{name}' is installed (installed: {have}); "
            f"pip install 'edgeslm[{name}]' or the backends/{name} package")
    try:
        return matches[0].load()
    except ImportError as exc:
        raise BackendNotInstalledError(
            f"the '{name}' backend is installed but its runtime is missing: {exc}; "
            f"pip install 'edgeslm[{name}]'") from exc


def get_engine(name: str):
    return load_plugin(ENGINES, name)


def get_exporter(name: str):
    return load_plugin(EXPORTERS, name)
