"""Pick format, precision and context for a target, then export, verify and sign.

Choice, in the target's order of preference::

    for each format the target lists:
        exporter not installed -> stop and name the extra, or (with allow_fallback) try the next format
        precisions = the target's list for it, intersected with what the exporter writes
        first precision whose forecast fits -> chosen;   none fits -> DoesNotFitError with the figures

Every departure from the target's first choice is recorded as a note, printed and kept in the
bundle's manifest, so nobody has to guess why a bundle is fp32 when the target prefers int8.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ..errors import BackendNotInstalledError, BundleError, TargetError
from ..spec import ModelSpec
from .fit import Forecast, forecast, largest_context, refuse
from .profile import FormatSupport, TargetProfile


@dataclass(frozen=True)
class ExportPlan:
    target: TargetProfile
    format: str
    precision: str
    context: int  # tokens of KV cache the bundle declares
    forecast: Forecast  # at that context
    largest_context: int  # longest context that would still fit at this precision
    notes: tuple[str, ...]  # why this differs from the target's first choice, if it does

    def manifest_fields(self) -> dict[str, Any]:
        """Extra manifest fields (documented in docs/bundle.md)."""
        t = self.target
        return {
            "target_profile": {"name": t.name, "title": t.title, "source": t.source, "sha256": t.sha256,
                               "schema_version": 1},
            "forecast": {**self.forecast.to_dict(), "largest_context": self.largest_context,
                         "notes": list(self.notes)},
        }


def installed_exporters(formats: Iterable[str] | None = None) -> dict[str, tuple[str, ...]]:
    """{format: precisions its installed exporter writes}, for ``formats`` (default: all installed).

    Exporters whose runtime is missing are left out. Only the named plugins are imported, since
    some pull in a heavy converter at import time.
    """
    from ..plugins import EXPORTERS, available, get_exporter

    wanted = None if formats is None else set(formats)
    out = {}
    for name in available(EXPORTERS):
        if wanted is not None and name not in wanted:
            continue
        try:
            out[name] = tuple(get_exporter(name).precisions)
        except BackendNotInstalledError:
            continue
    return out


def plan_export(spec: ModelSpec, target: TargetProfile, *, format: str | None = None, precision: str | None = None,
                context: int | None = None, allow_fallback: bool = False,
                exporters: Mapping[str, tuple[str, ...]] | None = None) -> ExportPlan:
    """Choose what to export for ``target`` (see the module docstring); raises when nothing can be chosen."""
    exporters = installed_exporters(f.name for f in target.formats) if exporters is None else exporters
    ctx = context or min(target.runtime.default_context, spec.context_length)
    if ctx > spec.context_length:
        raise TargetError(f"--context-length {ctx} exceeds the model's own context ({spec.context_length})")
    formats = _candidate_formats(target, format)
    # Fit first: a model that fits nothing the target runs is refused before any talk of installing.
    combos = [(fs.name, p) for fs in formats for p in fs.precisions if precision in (None, p)]
    if combos and not any(forecast(spec, target, f, p, ctx).fits for f, p in combos):
        raise refuse(spec, target, forecast(spec, target, *combos[0], ctx))
    notes: list[str] = []
    for i, fs in enumerate(formats):
        later = [f.name for f in formats[i + 1:]]
        usable, why = _usable_precisions(target, fs, i, exporters, precision)
        if why:
            _fall_back(target, formats, later, why, allow_fallback, notes, no_exporter=fs.name not in exporters)
            continue
        wanted = (precision,) if precision is not None else fs.precisions
        if usable[0] != wanted[0]:
            notes.append(f"{target.name} prefers {fs.name} {wanted[0]}, but the installed {fs.name} exporter "
                         f"writes only {', '.join(exporters[fs.name])}; using {usable[0]}, the best one available")
        return _first_that_fits(spec, target, fs, usable, ctx, notes)
    raise TargetError(f"{target.name}: no format to export to")  # pragma: no cover - formats is never empty


def _candidate_formats(target: TargetProfile, format: str | None) -> list[FormatSupport]:
    """The target's formats in its order, or only ``format`` when one is asked for."""
    if format is None:
        return list(target.formats)
    formats = [f for f in target.formats if f.name == format]
    if not formats:
        raise TargetError(f"{target.name} does not run '{format}' bundles; it runs "
                          f"{', '.join(f.name for f in target.formats)}")
    return formats


def _usable_precisions(target: TargetProfile, fs: FormatSupport, i: int, exporters: Mapping[str, tuple[str, ...]],
                       precision: str | None) -> tuple[list[str], str]:
    """(precisions of ``fs`` the installed exporter writes, best first; why none, or "")."""
    if fs.name not in exporters:
        lead = f"{target.name} prefers {fs.name}, but" if i == 0 else f"{target.name}'s next format is {fs.name};"
        return [], f"{lead} no {fs.name} exporter is installed (pip install 'edgeslm[{fs.name}]')"
    wanted = fs.precisions
    if precision is not None:
        if precision not in fs.precisions:
            raise TargetError(f"{target.name} does not run {fs.name} {precision}; it runs "
                              f"{', '.join(fs.precisions)}")
        wanted = (precision,)
    usable = [p for p in wanted if p in exporters[fs.name]]
    if usable:
        return usable, ""
    return [], (f"the installed {fs.name} exporter writes {', '.join(exporters[fs.name])}, but {target.name} "
                f"runs {fs.name} as {', '.join(wanted)}")


def _fall_back(target: TargetProfile, formats: list[FormatSupport], later: list[str], why: str,
               allow_fallback: bool, notes: list[str], no_exporter: bool) -> None:
    """Note the move to the next format, or raise when falling back is not allowed or possible."""
    if allow_fallback and not later and no_exporter:
        names = [f.name for f in formats]
        raise BackendNotInstalledError(
            f"no exporter is installed for any format {target.name} runs ({', '.join(names)}): "
            + "; ".join(f"pip install 'edgeslm[{n}]'" for n in names))
    if not allow_fallback or not later:
        tail = f"; or pass --allow-fallback to use {later[0]}" if later else ""
        raise BackendNotInstalledError(why + tail)
    notes.append(f"{why}; falling back to {later[0]}")


def _first_that_fits(spec: ModelSpec, target: TargetProfile, fs: FormatSupport, usable: list[str], ctx: int,
                     notes: list[str]) -> ExportPlan:
    tried = []
    for p in usable:
        f = forecast(spec, target, fs.name, p, ctx)
        if f.fits:
            if tried:
                notes.append(f"{fs.name} {tried[0].precision} does not fit at {ctx} tokens; using {p}")
            return ExportPlan(target=target, format=fs.name, precision=p, context=ctx, forecast=f,
                              largest_context=largest_context(spec, target, fs.name, p), notes=tuple(notes))
        tried.append(f)
    raise refuse(spec, target, tried[-1])


def export_for_target(model: Any, out_dir: str | Path, target: str | TargetProfile, *, format: str | None = None,
                      precision: str | None = None, context_length: int | None = None, allow_fallback: bool = False,
                      sign_key: str | Path | None = None, parity: bool = True, parity_tokens: int = 32,
                      overwrite: bool = False, steps=None, echo: Callable[[str], None] = lambda s: None,
                      options: dict[str, Any] | None = None):
    """Plan, forecast, export with the backend plugin (parity checked), record target and forecast in
    the manifest, then sign with ``sign_key`` and verify the signature. Returns (Bundle, ExportPlan)."""
    from ..exporting import export_model
    from ..progress import NULL_STEPS
    from .catalog import load_target
    from .fit import summary_line
    from .modelspec import read_spec

    profile = load_target(target)
    spec = read_spec(model)
    plan = plan_export(spec, profile, format=format, precision=precision, context=context_length,
                       allow_fallback=allow_fallback)
    for note in plan.notes:
        echo(f"note: {note}")
    echo(f"target {profile.name}: {summary_line(plan.forecast)}; largest context that fits: {plan.largest_context}")
    bundle = export_model(model, out_dir, format=plan.format, precision=plan.precision, context_length=plan.context,
                          target=profile.name, parity=parity, parity_tokens=parity_tokens, overwrite=overwrite,
                          steps=steps or NULL_STEPS, extra_manifest=plan.manifest_fields(), options=options)
    if sign_key is not None:
        from ..bundle.signing import sign_and_verify

        echo(f"signed with key {sign_and_verify(bundle.path, sign_key)}")
    if bundle.manifest.get("context_length") != plan.context:  # pragma: no cover - export_model caps it
        raise BundleError(f"{bundle.path}: context {bundle.manifest.get('context_length')} differs from the plan")
    return bundle, plan
