"""TargetProfile: what one device can run, validated from a TOML file into frozen dataclasses.

A target file (``targets/raspberry-pi-5.toml``) is data, not code: the file's stem is the
target's name, and every figure can carry a comment saying where it came from. See
docs/targets.md for the schema. Validation errors are named, so tooling can tell a typo
from a wrong unit::

    TargetError                       (edgeslm.errors)
    ├── UnknownTargetError            no file with that name on the search path ("did you mean")
    └── TargetFileError               a target file does not validate
        ├── MissingFieldError         a required field is absent
        ├── UnknownFormatError        a format name that is not spelled like one
        ├── UnknownPrecisionError     a precision neither the core, an installed plugin nor the file sizes
        └── UnitError                 a byte quantity without a unit, or with a wrong one
"""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import TargetError
from .precisions import COMPUTE_BYTES, PrecisionCost, known_precisions
from .units import UnitParseError, parse_bytes

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 installs tomli (a marker in pyproject.toml)
    import tomli as tomllib

SCHEMA_VERSION = 1
#: A format is a plugin's name, and data here: a target may list a format whose plugin this machine
#: lacks (a workstation sizing a phone), so only the spelling is checked when a file is read;
#: `edgeslm export` names the plugin to install.
FORMAT_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
KINDS = ("sbc", "embedded-gpu", "phone", "laptop", "desktop", "server", "mcu")


class UnknownTargetError(TargetError):
    """No target of that name on the search path."""


class TargetFileError(TargetError):
    """A target file is unreadable or does not validate."""


class MissingFieldError(TargetFileError):
    """A required field is absent from a target file."""


class UnknownFormatError(TargetFileError):
    """A target lists a format name that is not spelled like one (``onnx``, ``tflite-micro``)."""


class UnknownPrecisionError(TargetFileError):
    """A target lists a precision the fit forecast cannot size."""


class UnitError(TargetFileError):
    """A byte quantity has no unit or an unknown one."""


@dataclass(frozen=True)
class Cpu:
    arch: str  # "arm64", "x86_64", "xtensa", "armv7e-m" ...: which binaries/kernels apply
    cores: int  # sizes the default thread count and sanity-checks speed expectations
    name: str = ""  # "4x Cortex-A76 @ 2.4 GHz": for people


@dataclass(frozen=True)
class Memory:
    ram: int  # bytes of RAM (MCUs: internal SRAM + PSRAM); what the OS reports as total
    storage: int  # bytes of disk/flash for bundles; the weights must fit here too
    budget: int  # bytes of RAM one model process may use: RAM minus OS, other apps, headroom
    weights_in: str = "ram"  # "ram" (loaded/mmapped) or "flash" (MCUs execute from flash in place)
    weights_budget: int | None = None  # bytes of flash for weights when weights_in == "flash"
    sram: int | None = None  # MCUs: fast internal RAM (tensor arena); for the record
    psram: int | None = None  # MCUs: external pseudo-static RAM, slower; for the record


@dataclass(frozen=True)
class Accelerator:
    name: str  # "Hexagon NPU", "Apple Neural Engine"
    kind: str  # "gpu" | "npu" | "dsp"
    note: str = ""  # which formats reach it, TOPS, caveats


@dataclass(frozen=True)
class FormatSupport:
    name: str  # bundle format, e.g. "onnx"
    precisions: tuple[str, ...]  # what the device runs well in this format, best first
    note: str = ""  # which runtime/delegate, why this order
    # How the runtime computes whatever the weight precision ("fp16" on Core ML and GPUs):
    # sizes activations and the KV cache. Empty = as the precision implies (fp32 unless fp16/int8).
    compute: str = ""


@dataclass(frozen=True)
class RuntimeLimits:
    default_context: int  # tokens of KV cache to plan for when the user gives none
    overhead: int  # bytes the runtime itself needs (interpreter, libraries, session, arena slack)
    static_shapes: bool = False  # runtime needs fixed input shapes (NPUs, TFLite Micro)
    full_int8_only: bool = False  # only integer kernels exist (MCUs without an FPU path)
    max_graph_bytes: int | None = None  # largest model file the runtime/delegate accepts


@dataclass(frozen=True)
class TargetProfile:
    name: str  # the file's stem: what users type after --target
    title: str  # "Raspberry Pi 5 (8 GB)"
    kind: str  # one of KINDS; MCUs are sized differently (weights in flash)
    source: str  # where the figures come from (vendor datasheet / product brief)
    cpu: Cpu
    memory: Memory
    accelerators: tuple[Accelerator, ...]
    formats: tuple[FormatSupport, ...]  # in preference order: the exporter tries the first first
    runtime: RuntimeLimits
    path: Path | None = None  # the file it was read from
    sha256: str = ""  # of that file, recorded in manifests so a bundle says which profile sized it
    # sizing facts of every precision the formats list, resolved when the file was read (core,
    # installed plugins, then the file's own [precisions.NAME] tables): what the forecast uses
    precisions: Mapping[str, PrecisionCost] = field(default_factory=dict, compare=False, hash=False)

    def format(self, name: str) -> FormatSupport | None:
        return next((f for f in self.formats if f.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        d = asdict(self)
        d["path"] = str(self.path) if self.path else None
        return d


class _Reader:
    """Pulls typed fields out of one TOML table, naming file and field in every error."""

    def __init__(self, where: str, table: dict[str, Any], prefix: str = ""):
        self.where, self.table, self.prefix = where, table, prefix

    def _name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def get(self, key: str, typ: type | tuple[type, ...], default: Any = ..., required: bool = True) -> Any:
        if key not in self.table:
            if default is not ... or not required:
                return None if default is ... else default
            raise MissingFieldError(f"{self.where}: missing field '{self._name(key)}'")
        value = self.table[key]
        if isinstance(value, bool) and typ in (int, float):
            raise TargetFileError(f"{self.where}: '{self._name(key)}' must be a number, not {value!r}")
        if not isinstance(value, typ):
            want = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
            raise TargetFileError(f"{self.where}: '{self._name(key)}' must be {want}, not {value!r}")
        return value

    def quantity(self, key: str, required: bool = True) -> int | None:
        if key not in self.table:
            if required:
                raise MissingFieldError(f"{self.where}: missing field '{self._name(key)}'")
            return None
        try:
            return parse_bytes(self.table[key])
        except UnitParseError as exc:
            raise UnitError(f"{self.where}: '{self._name(key)}' = {exc}") from None

    def sub(self, key: str) -> "_Reader":
        return _Reader(self.where, self.get(key, dict), f"{self.prefix}{key}.")


def parse_target(name: str, data: dict[str, Any], where: str = "<memory>", path: Path | None = None,
                 sha256: str = "") -> TargetProfile:
    """Validate a parsed TOML document into a TargetProfile (raises TargetFileError subclasses)."""
    top = _Reader(where, data)
    version = top.get("schema_version", int)
    if version > SCHEMA_VERSION:
        raise TargetFileError(f"{where}: schema_version {version} is newer than this edgeslm understands "
                              f"({SCHEMA_VERSION}); upgrade edgeslm")
    kind = top.get("kind", str)
    if kind not in KINDS:
        raise TargetFileError(f"{where}: kind '{kind}' is not one of {', '.join(KINDS)}")
    c = top.sub("cpu")
    cpu = Cpu(arch=c.get("arch", str), cores=c.get("cores", int), name=c.get("name", str, default=""))
    if cpu.cores < 1:
        raise TargetFileError(f"{where}: 'cpu.cores' must be >= 1")
    accelerators = []
    for i, a in enumerate(top.get("accelerators", list, default=[])):
        r = _Reader(where, a if isinstance(a, dict) else {}, f"accelerators[{i}].")
        accelerators.append(Accelerator(name=r.get("name", str), kind=r.get("kind", str),
                                        note=r.get("note", str, default="")))
    costs = known_precisions(_read_precisions(top))
    formats = _read_formats(top, costs)
    runtime = _read_runtime(top.sub("runtime"), formats, costs)
    return TargetProfile(name=name, title=top.get("title", str), kind=kind, source=top.get("source", str),
                         cpu=cpu, memory=_read_memory(top.sub("memory"), kind), accelerators=tuple(accelerators),
                         formats=formats, runtime=runtime, path=path, sha256=sha256,
                         precisions={p: costs[p] for f in formats for p in f.precisions})


def _read_memory(m: _Reader, kind: str) -> Memory:
    where = m.where
    weights_in = m.get("weights_in", str, default="ram")
    if weights_in not in ("ram", "flash"):
        raise TargetFileError(f"{where}: 'memory.weights_in' must be \"ram\" or \"flash\", not {weights_in!r}")
    if kind == "mcu":
        sram, flash = m.quantity("sram"), m.quantity("flash")
        psram = m.quantity("psram", required=False)
        ram, storage = sram + (psram or 0), flash
    else:
        sram = psram = None
        ram, storage = m.quantity("ram"), m.quantity("storage")
    memory = Memory(ram=ram, storage=storage, budget=m.quantity("budget"), weights_in=weights_in,
                    weights_budget=m.quantity("weights_budget", required=weights_in == "flash"),
                    sram=sram, psram=psram)
    if memory.budget > memory.ram:
        raise TargetFileError(f"{where}: 'memory.budget' ({memory.budget:,} B) exceeds the RAM ({memory.ram:,} B)")
    if memory.weights_budget is not None and memory.weights_budget > memory.storage:
        raise TargetFileError(f"{where}: 'memory.weights_budget' exceeds the flash/storage")
    return memory


def _read_precisions(top: _Reader) -> dict[str, PrecisionCost]:
    """The file's own ``[precisions.NAME]`` sizing facts (used where no installed plugin declares NAME)."""
    out = {}
    for pname in top.get("precisions", dict, default={}):
        r = top.sub("precisions").sub(pname)
        group = r.get("group", int, default=0)
        out[pname] = PrecisionCost(bits=r.get("bits", int), group=group or None,
                                   scale_bytes=float(r.get("scale_bytes", (int, float), default=0.0)),
                                   act_bytes=r.get("act_bytes", int), note=r.get("note", str, default=""))
        if out[pname].bits < 1 or out[pname].act_bytes < 1 or group < 0:
            raise TargetFileError(f"{top.where}: 'precisions.{pname}': bits and act_bytes must be >= 1, group >= 0")
    return out


def _read_formats(top: _Reader, costs: dict[str, PrecisionCost]) -> tuple[FormatSupport, ...]:
    where = top.where
    entries = top.get("formats", list)
    if not entries:
        raise MissingFieldError(f"{where}: 'formats' is empty; list at least one [[formats]] entry")
    formats = []
    for i, f in enumerate(entries):
        r = _Reader(where, f if isinstance(f, dict) else {}, f"formats[{i}].")
        fname = r.get("name", str)
        if not FORMAT_NAME.fullmatch(fname):
            raise UnknownFormatError(f"{where}: '{fname}' in formats[{i}] is not a format name "
                                     f"(lower-case letters, digits, '.', '_', '-'; e.g. onnx, litert)")
        precs = tuple(r.get("precisions", list))
        if not precs:
            raise MissingFieldError(f"{where}: 'formats[{i}].precisions' is empty")
        for p in precs:
            if p not in costs:
                raise UnknownPrecisionError(
                    f"{where}: unknown precision '{p}' for {fname} (known: {', '.join(costs)}); install the "
                    f"backend that writes it, or declare its sizing facts in a [precisions.{p}] table")
        compute = r.get("compute", str, default="")
        if compute and compute not in COMPUTE_BYTES:
            raise UnknownPrecisionError(f"{where}: 'formats[{i}].compute' must be one of "
                                        f"{', '.join(COMPUTE_BYTES)}, not {compute!r}")
        formats.append(FormatSupport(name=fname, precisions=precs, note=r.get("note", str, default=""),
                                     compute=compute))
    return tuple(formats)


def _read_runtime(rt: _Reader, formats: tuple[FormatSupport, ...], costs: dict[str, PrecisionCost]) -> RuntimeLimits:
    where = rt.where
    runtime = RuntimeLimits(default_context=rt.get("default_context", int), overhead=rt.quantity("overhead"),
                            static_shapes=rt.get("static_shapes", bool, default=False),
                            full_int8_only=rt.get("full_int8_only", bool, default=False),
                            max_graph_bytes=rt.quantity("max_graph_size", required=False))
    if runtime.default_context < 1:
        raise TargetFileError(f"{where}: 'runtime.default_context' must be >= 1")
    if runtime.full_int8_only:
        bad = [f"{f.name} {p}" for f in formats for p in f.precisions if costs[p].act_bytes != 1]
        if bad:
            raise TargetFileError(f"{where}: runtime.full_int8_only is set but formats list {', '.join(bad)}")
    return runtime


def load_target_file(path: str | Path) -> TargetProfile:
    """Read and validate one ``<name>.toml`` file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TargetFileError(f"{path}: cannot read ({exc})") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TargetFileError(f"{path}: not valid TOML ({exc})") from exc
    return parse_target(path.stem, data, where=str(path), path=path, sha256=hashlib.sha256(raw).hexdigest())
