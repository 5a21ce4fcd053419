"""The export pipeline: source -> backend exporter -> bundle -> parity check -> manifest.

Backends implement :class:`Exporter` and register it under the ``edgeslm.exporters`` entry
point group; :func:`export_model` drives any of them the same way.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bundle import Bundle, write_manifest
from .bundle.manifest import save_manifest
from .errors import ExportError, ParityError
from .outputs import check_output_dir, make_dir
from .plugins import default_format, get_engine, get_exporter
from .progress import NULL_STEPS, Steps
from .verify.reference import add_to_manifest as add_reference


@dataclass
class ExportSpec:
    """What to produce; target profiles fill this in from device data."""

    format: str  # a format plugin's name: "onnx", "openvino", "litert", "coreml", a third party's
    precision: str = "fp32"
    context_length: int = 2048  # KV cache / position budget the bundle declares
    target: str | None = None  # device target name, if chosen by one
    options: dict[str, Any] = field(default_factory=dict)  # backend-specific knobs


class Exporter(ABC):
    """Workstation side of a backend: writes the model files of a bundle."""

    name: str = ""
    #: precisions this exporter can write, in the order of preference
    precisions: tuple[str, ...] = ("fp32",)
    #: minimum greedy top-1 agreement with the source per precision; absent = recorded only
    min_top1_agreement: dict[str, float] = {"fp32": 1.0}

    @abstractmethod
    def export(self, source, spec: ExportSpec, out_dir: Path, steps: Steps) -> dict[str, Any]:
        """Write model files into ``out_dir``; return manifest fields (at least ``artifacts.model``).

        ``artifacts.files`` is filled in by :func:`export_model`: every file the exporter wrote."""

    def parity_engine(self, bundle: Bundle):
        """The engine the parity check runs through, called after :meth:`export`.

        ``None`` (the default) opens the format's registered engine on the bundle. A backend
        whose runtime cannot predict on the export machine (Core ML off Apple platforms)
        returns a stand-in Engine over what it converted, and says so in its manifest fields.
        """
        return None


def export_model(model: str | Path | Any, out_dir: str | Path, format: str | None = None, precision: str | None = None,
                 context_length: int | None = None, target: str | None = None, parity: bool = True,
                 parity_tokens: int = 32, overwrite: bool = False, steps: Steps = NULL_STEPS,
                 options: dict[str, Any] | None = None, extra_manifest: dict[str, Any] | None = None) -> Bundle:
    """Export ``model`` (a name, a path, or a loaded SourceModel) into a verified bundle.

    ``format`` None: the installed format plugins' default (:func:`edgeslm.plugins.default_format`).
    """
    out_dir = check_output_dir(Path(out_dir), "bundle folder")  # before minutes of work
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ExportError(f"{out_dir} exists and is not empty; choose another directory or pass --overwrite")
    format = format or default_format()
    exporter = _exporter(format, precision)
    precision = precision or exporter.precisions[0]  # each backend's own default (fp32, coreml: fp16)
    source = _load(model, steps)
    ctx = min(context_length or 2048, source.spec.context_length)
    spec = ExportSpec(format=format, precision=precision, context_length=ctx, target=target, options=options or {})

    # Build next to the destination so the final rename is atomic (same filesystem).
    make_dir(out_dir.parent)
    tmp = Path(tempfile.mkdtemp(prefix=".edgeslm-export-", dir=out_dir.parent))
    try:
        manifest = _write_files(exporter, source, spec, tmp, steps, extra_manifest or {})
        report = None
        if parity:
            report = check_parity(source, tmp, exporter.min_top1_agreement.get(precision), parity_tokens, steps,
                                  exporter=exporter, reference_dir=tmp)
            manifest["parity"] = report.to_dict()
            add_reference(manifest, tmp, report.min_top1_agreement)  # for `edgeslm verify --on-device`
            save_manifest(tmp, manifest)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if report is not None and not report.passed:
        raise ParityError(
            f"{format} {precision} export disagrees with its source: greedy top-1 agreement "
            f"{report.top1_agreement:.1%} < required {report.min_top1_agreement:.0%} "
            f"(max logit diff {report.max_abs_logit_diff:.3g}); bundle kept at {out_dir} for inspection")
    return Bundle.open(out_dir)


def _exporter(format: str, precision: str | None) -> Exporter:
    """The format's exporter, refusing before any work when a half is missing or the precision is not written."""
    exporter = get_exporter(format)()
    get_engine(format)  # fail before minutes of work if the device half is missing
    if precision is not None and precision not in exporter.precisions:
        raise ExportError(f"the {format} exporter writes {', '.join(exporter.precisions)}, not '{precision}'")
    return exporter


def _load(model: Any, steps: Steps):
    from .sources import SourceModel, load_source

    if isinstance(model, SourceModel):
        return model
    with steps.step(f"Loading {model}"):
        return load_source(model)


def _write_files(exporter: Exporter, source, spec: ExportSpec, tmp: Path, steps: Steps,
                 extra_manifest: dict[str, Any]) -> dict[str, Any]:
    """Run the exporter into ``tmp``, add the tokenizer, write and return the manifest (no parity yet)."""
    t0 = time.perf_counter()
    with steps.step(f"Exporting to {spec.format} ({spec.precision})"):
        fields = exporter.export(source, spec, tmp, steps)
    export_s = time.perf_counter() - t0
    artifacts = fields.get("artifacts")
    if not isinstance(artifacts, dict) or "model" not in artifacts:
        raise ExportError(f"the {spec.format} exporter returned no artifacts.model (the file its engine opens)")
    artifacts["files"] = sorted(p.name for p in tmp.iterdir())  # what the exporter wrote, before the tokenizer
    tokenizer_files = source.tokenizer.save(tmp)
    return write_manifest(tmp, {
        "format": spec.format,
        "precision": spec.precision,
        "context_length": spec.context_length,
        "target": spec.target,
        "model": {"name": source.name, "source_kind": source.kind, "source_sha256": source.sha256,
                  "architecture": source.spec.architecture, "parameters": source.spec.num_parameters},
        "spec": source.spec.to_dict(),
        "tokenizer": {"files": tokenizer_files},
        "export": {"seconds": round(export_s, 1), "options": spec.options},
        **fields,
        **extra_manifest,
    })


def check_parity(source, bundle_dir: Path, min_agreement: float | None, tokens: int, steps: Steps,
                 exporter: Exporter | None = None, reference_dir: Path | None = None):
    """Compare the bundle with its source; with ``reference_dir``, also store the source's side
    there (``parity_reference.npz``: prompts, greedy tokens, top-k logits) for on-device checks."""
    from .verify.parity import reference_run, run_parity, source_text_nll
    from .verify.reference import save_reference

    bundle = Bundle.open(bundle_dir)
    with steps.step(f"Running the source on {tokens}-token parity prompts"):
        refs = reference_run(source, new_tokens=tokens)
        text_ids, src_nll = source_text_nll(source, max_tokens=int(bundle.manifest["context_length"]))
    if reference_dir is not None:
        save_reference(reference_dir, refs, text_ids, src_nll)
    engine = exporter.parity_engine(bundle) if exporter is not None else None
    if engine is None:
        engine = get_engine(bundle.format)(bundle)
    try:
        with steps.step("Comparing the export with the source"):
            return run_parity(engine, refs, text_ids, src_nll, min_agreement)
    finally:
        engine.close()
