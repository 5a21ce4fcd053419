"""Find backends by name through entry points; built-in and third-party plugins alike.

A backend package declares, in its pyproject.toml::

    [project.entry-points."edgeslm.engines"]      # device side: runs a bundle
    onnx = "edgeslm_onnx.engine:OnnxEngine"
    [project.entry-points."edgeslm.exporters"]    # workstation side: writes a bundle
    onnx = "edgeslm_onnx.exporter:OnnxExporter"
    [project.entry-points."edgeslm.formats"]      # facts about the format (a FormatInfo)
    onnx = "edgeslm_onnx.formats:ONNX"
    [project.entry-points."edgeslm.commands"]     # optional extra verbs (click commands)
    micro = "edgeslm_litert.micro_cli:micro"

and the core never names a backend in code. A ``FormatInfo`` lives in a module that imports
neither the runtime nor torch, so the fit forecast and the device agent can read it anywhere.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Mapping

from .errors import BackendNotInstalledError
from .targets.precisions import PrecisionCost

ENGINES = "edgeslm.engines"
EXPORTERS = "edgeslm.exporters"
FORMATS = "edgeslm.formats"
COMMANDS = "edgeslm.commands"


@dataclass(frozen=True)
class FormatInfo:
    """What a backend declares about its bundle format; importable without its runtime."""

    name: str  # the format name targets and manifests use ("onnx")
    # distribution whose version the device agent reports as the runtime's ("onnxruntime")
    runtime: str = ""
    # sizing facts for precisions the core's generic table (fp32, fp16, bf16, int8, int4) lacks,
    # so `edgeslm fit` can size them; the generic names cannot be redefined
    precisions: Mapping[str, PrecisionCost] = field(default_factory=dict)
    # without --target, `edgeslm export` uses the installed exporter whose format ranks lowest
    default_rank: int = 100
    # what to run when a model is far too big for this format's devices (shown by `fit`)
    small_model_hint: str = ""


def available(group: str) -> list[str]:
    return sorted({ep.name for ep in entry_points(group=group)})


def load_plugin(group: str, name: str) -> Any:
    matches = [ep for ep in entry_points(group=group) if ep.name == name]
    if not matches:
        kind = {ENGINES: "engine", EXPORTERS: "exporter", FORMATS: "format", COMMANDS: "command"}[group]
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


def _load_all(group: str) -> dict[str, Any]:
    """Every plugin of ``group``; one that fails to load is left out with a warning, never fatal
    (a broken third-party plugin must not take `edgeslm fit` or the CLI down with it)."""
    out: dict[str, Any] = {}
    for ep in entry_points(group=group):
        if ep.name in out:
            continue
        try:
            out[ep.name] = ep.load()
        except Exception as exc:  # noqa: BLE001 - any failure of foreign code: skip it, say why
            warnings.warn(f"edgeslm plugin {group}:{ep.name} ({ep.value}) failed to load: {exc}", stacklevel=2)
    return out


def formats() -> dict[str, FormatInfo]:
    """{format name: FormatInfo} declared by the installed plugins."""
    return {name: info for name, info in _load_all(FORMATS).items() if isinstance(info, FormatInfo)}


def format_info(name: str) -> FormatInfo | None:
    return formats().get(name)


def commands() -> dict[str, Any]:
    """{verb: click command} that installed plugins add to the ``edgeslm`` command."""
    return _load_all(COMMANDS)


def default_format() -> str:
    """The format ``export`` writes without --format or --target: the installed exporter whose
    format declares the lowest ``default_rank`` (ties by name); the only exporter when none
    declares one. Several exporters and no declaration: refused, never an alphabetical guess."""
    names = available(EXPORTERS)
    if not names:
        raise BackendNotInstalledError("no exporter plugin is installed; pip install 'edgeslm[onnx]' "
                                       "or another backend package")
    info = formats()
    ranked = [n for n in names if n in info]
    if ranked:
        return min(ranked, key=lambda n: (info[n].default_rank, n))
    if len(names) == 1:
        return names[0]
    raise BackendNotInstalledError(f"several exporters are installed ({', '.join(names)}) and none declares a "
                                   f"default format (edgeslm.formats entry point; reinstall the backends); "
                                   f"pass --format")
