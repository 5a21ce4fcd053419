"""Compression recipes: a small TOML list of steps, validated in full before any work starts.

A recipe names what to do to a model, in order::

    name = "prune25-recover-int4"
    description = "-25% parameters by structured pruning, recovered by distillation, int4, ONNX"
    calibration = "notes.txt"        # optional: calibration text for every calibrated step

    [[step]]
    kind = "prune"                   # prune | lowrank | recover | quantize | export
    method = "structured"            # structured | magnitude | wanda | sparsegpt
    heads = 0.33
    mlp = 0.33

    [[step]]
    kind = "recover"                 # distillation: the original model teaches the pruned one
    steps = 200

    [[step]]
    kind = "quantize"
    method = "rtn"                   # int4 grid: rtn | gptq

    [[step]]
    kind = "export"
    format = "onnx"                  # or target = "raspberry-pi-5"
    precision = "int4"

Each kind is a frozen dataclass below; its fields are the keys a step may have (a why-comment
each), and :func:`parse_recipe` refuses an unknown kind, an unknown key (naming the close
match), a wrong type or an out-of-range value with the step's number and kind. Built-in
recipes live in ``edgeslm/compress/recipes/*.toml`` (``edgeslm recipe list``). The runner is
:mod:`.recipe_run`.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EdgeSLMError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 installs tomli
    import tomli as tomllib

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


class RecipeError(EdgeSLMError):
    """A recipe is unreadable, names an unknown step kind or key, or has a bad value."""


# -- the steps ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PruneStep:
    """Structured (heads + MLP channels: a smaller model) or unstructured sparsity (zeros)."""

    method: str = "structured"  # structured | magnitude | wanda | sparsegpt
    heads: float = 0.0  # structured: fraction of attention heads removed per layer
    mlp: float = 0.0  # structured: fraction of MLP channels removed per layer
    heads_mode: str = "query"  # structured: query (KV cache unchanged) | kv_group (whole KV groups)
    amount: float = 0.0  # structured: heads = mlp = amount when those are not given; else the sparsity
    pattern: str = "unstructured"  # sparsity: unstructured | N:M such as 2:4 (wanda, sparsegpt)
    layerwise: str = "uniform"  # wanda/sparsegpt unstructured: uniform | owl (per-layer ratios by outlier share)
    owl_lambda: float = 0.08  # owl: every layer's sparsity within amount +- owl_lambda
    owl_m: float = 5.0  # owl: an outlier is a score above owl_m x its layer's mean
    calibration_tokens: int = 256  # tokens of calibration text scored (activation-aware; sparsegpt: 2048+)
    calibration: str = ""  # text file for this step [default: the recipe's, else built-in text]

    def check(self) -> None:
        _choice("method", self.method, ("structured", "magnitude", "wanda", "sparsegpt"))
        for k in ("heads", "mlp", "amount"):
            _fraction(k, getattr(self, k))
        if self.method == "structured":
            _choice("heads_mode", self.heads_mode, ("query", "kv_group"))
            if self.pattern != "unstructured":
                raise ValueError("pattern is for sparsity methods, not structured pruning")
            if not (self.heads or self.mlp or self.amount):
                raise ValueError("structured pruning needs heads, mlp or amount > 0")
            return self._check_owl()
        if self.heads or self.mlp:
            raise ValueError(f"heads/mlp are for method = \"structured\"; {self.method} takes amount (and pattern)")
        if self.pattern != "unstructured":
            if not re.fullmatch(r"\d+:\d+", self.pattern) or self.method == "magnitude":
                raise ValueError("pattern is 'unstructured' or N:M such as '2:4' (wanda or sparsegpt)")
        elif not self.amount:
            raise ValueError(f"{self.method} needs amount, the fraction of weights zeroed (e.g. 0.5)")
        self._check_owl()

    def _check_owl(self) -> None:
        _choice("layerwise", self.layerwise, ("uniform", "owl"))
        if self.layerwise == "owl":
            if self.method not in ("wanda", "sparsegpt") or self.pattern != "unstructured":
                raise ValueError("layerwise = \"owl\" is for unstructured wanda or sparsegpt (N:M is uniform)")
            if not (self.owl_lambda > 0 and 0 <= self.amount - self.owl_lambda and self.amount + self.owl_lambda < 1):
                raise ValueError(f"owl_lambda must be > 0 with amount +- owl_lambda inside [0, 1), not {self.owl_lambda}")
            if not self.owl_m > 0:
                raise ValueError(f"owl_m must be > 0, not {self.owl_m}")

    def describe(self) -> str:
        if self.method == "structured":
            h, m = self.heads or self.amount, self.mlp or self.amount
            return f"structured pruning: heads -{h:.0%}, MLP -{m:.0%}"
        what = self.pattern if self.pattern != "unstructured" else f"{self.amount:.0%}"
        owl = f" (OWL per-layer, +-{self.owl_lambda:g})" if self.layerwise == "owl" else ""
        return f"{self.method} sparsity {what}{owl}"


@dataclass(frozen=True)
class LowRankStep:
    """SVD factorization of linears into two smaller ones (plain or whitened by activations)."""

    energy: float = 0.0  # keep this fraction of each matrix's squared singular values ...
    size: float = 0.0  # ... or keep this fraction of the weights (per matrix, or overall with global)
    targets: tuple[str, ...] = ("mlp",)  # mlp, attention, or layer names (down_proj ...)
    whiten: bool = False  # activation-aware SVD (SVD-LLM): truncate by output energy
    allocation: str = "uniform"  # uniform: every matrix alike | global: size is one budget, ranks by sensitivity
    calibration_tokens: int = 256  # tokens of calibration text (whiten)
    calibration: str = ""  # text file for this step [default: the recipe's, else built-in text]

    def check(self) -> None:
        _fraction("energy", self.energy)
        _fraction("size", self.size)
        if bool(self.energy) == bool(self.size):
            raise ValueError("give exactly one of energy or size")
        _choice("allocation", self.allocation, ("uniform", "global"))
        if self.allocation == "global" and not self.size:
            raise ValueError("allocation = \"global\" needs size (the fraction of weights kept)")

    def describe(self) -> str:
        kept = f"energy {self.energy:.0%}" if self.energy else f"size {self.size:.0%}"
        return f"low-rank {'whitened ' if self.whiten else ''}{kept} of {','.join(self.targets)}" + \
            (" (global ranks)" if self.allocation == "global" else "")


@dataclass(frozen=True)
class RecoverStep:
    """Distillation of the step's input on a teacher's logits (KL), checkpointed and resumable."""

    teacher: str = "source"  # source: the original model | input: this step's input
    steps: int = 0  # optimizer steps ...
    tokens: int = 0  # ... or a token budget: steps = tokens / (batch_size x seq_len) [default: 200 steps]
    seq_len: int = 64  # tokens per training window
    batch_size: int = 4
    lr: float = 2e-4  # AdamW peak (warm-up then cosine); recovery wants less than a fresh student
    temperature: float = 1.0  # KD temperature
    hard_weight: float = 0.0  # weight of cross-entropy on the text's own next tokens
    hidden_weight: float = 0.0  # weight of matching each decoder layer's output to the teacher's (layer i <-> i)
    text: str = ""  # training text file [default: text the teacher writes from built-in prompts]
    generate_tokens: int = 128  # without text: tokens per teacher sample
    samples: int = 2  # without text: samples per seed prompt
    keep_zeros: str = "auto"  # auto: keep zeros when an earlier step made them | true | false
    checkpoint_every: int = 50  # steps between checkpoints (the resume points)

    def check(self) -> None:
        _choice("teacher", self.teacher, ("source", "input"))
        if self.steps < 0 or self.tokens < 0:
            raise ValueError("steps and tokens must be >= 0")
        if self.steps and self.tokens:
            raise ValueError("give steps or tokens, not both")
        for k in ("seq_len", "batch_size", "generate_tokens", "samples"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1")
        if not self.lr > 0 or self.checkpoint_every < 0 or self.temperature <= 0:
            raise ValueError("lr and temperature must be > 0, checkpoint_every >= 0")
        if self.hard_weight < 0 or self.hidden_weight < 0:
            raise ValueError("hard_weight and hidden_weight must be >= 0")
        _choice("keep_zeros", self.keep_zeros, ("auto", "true", "false"))

    @property
    def n_steps(self) -> int:
        if self.tokens:
            return max(1, -(-self.tokens // (self.batch_size * self.seq_len)))
        return self.steps or 200

    def describe(self) -> str:
        return (f"recover: distill from the {'original model' if self.teacher == 'source' else 'step input'}, "
                f"{self.n_steps} steps x {self.batch_size} x {self.seq_len} tokens"
                + (f", hidden states x {self.hidden_weight:g}" if self.hidden_weight else ""))


@dataclass(frozen=True)
class QuantizeStep:
    """Decoder weights put on the int4 grid the ONNX int4 export stores (weights stay float)."""

    method: str = "rtn"  # rtn: round to nearest | gptq: calibrated, error spread by the inverse Hessian
    group_size: int = 32  # inputs per scale (MatMulNBits block)
    calibration_tokens: int = 256  # gptq
    calibration: str = ""  # text file for this step [default: the recipe's, else built-in text]

    def check(self) -> None:
        _choice("method", self.method, ("rtn", "gptq"))
        if self.group_size < 1:
            raise ValueError("group_size must be >= 1")

    def describe(self) -> str:
        return f"int4 weights ({self.method}, blocks of {self.group_size})"


@dataclass(frozen=True)
class ExportStep:
    """A verified bundle (parity-checked against this step's input)."""

    format: str = ""  # bundle format [default: the target's, else the installed default (onnx)]
    precision: str = ""  # [default: int4 after a quantize step, else the target's / exporter's]
    target: str = ""  # device target: picks format, precision, context; refuses what cannot fit
    context_length: int = 0  # [default: the target's, else min(2048, model's)]
    parity_tokens: int = 32  # greedy tokens per parity prompt
    options: dict = field(default_factory=dict)  # backend exporter options, e.g. {accuracy_level = 0}

    def check(self) -> None:
        if self.context_length < 0 or self.parity_tokens < 1:
            raise ValueError("context_length must be >= 0 and parity_tokens >= 1")

    def describe(self) -> str:
        where = f"target {self.target}" if self.target else (self.format or "default format")
        return f"export to {where}" + (f" {self.precision}" if self.precision else "")


KINDS: dict[str, type] = {"prune": PruneStep, "lowrank": LowRankStep, "recover": RecoverStep,
                          "quantize": QuantizeStep, "export": ExportStep}
MODEL_KINDS = ("prune", "lowrank", "recover", "quantize")  # steps that write a model folder


@dataclass(frozen=True)
class Step:
    kind: str
    params: Any  # one of the dataclasses above

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **_plain(dataclasses.asdict(self.params))}

    def digest(self) -> str:
        """What identifies the step for --resume (its kind and every parameter, defaults included).

        A key added in a later release is left out while it holds the value that does what the
        step did before the key existed, so a run started by an earlier release resumes with its
        finished steps kept (:data:`ADDED_KEYS`)."""
        d = {k: v for k, v in self.to_dict().items()
             if not (k in ADDED_KEYS.get(self.kind, {}) and ADDED_KEYS[self.kind][k] == v)}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


#: keys added to a step kind after recipes shipped, with the value that keeps the earlier behaviour;
#: a new key goes here, or every --resume of an older run redoes its steps of that kind
ADDED_KEYS: dict[str, dict[str, Any]] = {
    "prune": {"layerwise": "uniform", "owl_lambda": 0.08, "owl_m": 5.0},
    "recover": {"hidden_weight": 0.0},
}


@dataclass(frozen=True)
class Recipe:
    name: str
    steps: tuple[Step, ...]
    description: str = ""
    calibration: str = ""  # calibration text file for every calibrated step without its own
    model: str = ""  # the model it is meant for (``-m`` overrides)
    source: str = ""  # where it was read from (a path, or builtin:NAME)

    def to_toml(self) -> str:
        lines = [f"name = {_toml(self.name)}"]
        for k in ("description", "calibration", "model"):
            if getattr(self, k):
                lines.append(f"{k} = {_toml(getattr(self, k))}")
        for s in self.steps:
            lines += ["", "[[step]]"] + [f"{k} = {_toml(v)}" for k, v in s.to_dict().items()]
        return "\n".join(lines) + "\n"


# -- reading -----------------------------------------------------------------------------------
def builtin_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(RECIPES_DIR.glob("*.toml"))}


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A recipe file, or a built-in recipe by name; validated."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise RecipeError(f"{path}: no such recipe file")
        where = str(path)
    else:
        found = builtin_recipes()
        if str(name_or_path) not in found:
            close = difflib.get_close_matches(str(name_or_path), list(found), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise RecipeError(f"no built-in recipe '{name_or_path}'{hint}; built-in: {', '.join(found)}; "
                              "or give a .toml file")
        path, where = found[str(name_or_path)], f"builtin:{name_or_path}"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{where}: not valid TOML ({exc})") from exc
    return parse_recipe(data, where=where, default_name=path.stem)


def parse_recipe(data: dict[str, Any], where: str = "recipe", default_name: str = "recipe") -> Recipe:
    top = {"name", "description", "calibration", "model", "step"}
    for key in data:
        if key not in top:
            raise RecipeError(f"{where}: unknown key '{key}'{_hint(key, top)} (a recipe has: {', '.join(sorted(top))}; "
                              "steps are [[step]] tables)")
    raw_steps = data.get("step")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise RecipeError(f"{where}: no steps; add [[step]] tables with kind = one of {', '.join(KINDS)}")
    for key in ("name", "description", "calibration", "model"):
        if key in data and not isinstance(data[key], str):
            raise RecipeError(f"{where}: '{key}' must be a string")
    steps = tuple(_parse_step(raw, i + 1, where) for i, raw in enumerate(raw_steps))
    _check_order(steps, where)
    return Recipe(name=data.get("name", default_name), steps=steps, description=data.get("description", ""),
                  calibration=data.get("calibration", ""), model=data.get("model", ""), source=where)


def _parse_step(raw: Any, n: int, where: str) -> Step:
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: step {n} is not a table")
    kind = raw.get("kind")
    if kind not in KINDS:
        what = f"unknown kind '{kind}'{_hint(str(kind), KINDS)}" if kind is not None else "no kind"
        raise RecipeError(f"{where}: step {n}: {what}; kinds: {', '.join(KINDS)}")
    cls = KINDS[kind]
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in raw.items():
        if key == "kind":
            continue
        if key not in hints:
            raise RecipeError(f"{where}: step {n} ({kind}): unknown key '{key}'{_hint(key, names)}; "
                              f"{kind} takes: {', '.join(names)}")
        values[key] = _coerce(value, hints[key], f"{where}: step {n} ({kind}): {key}")
    try:
        params = cls(**values)
        params.check()
    except ValueError as exc:
        raise RecipeError(f"{where}: step {n} ({kind}): {exc}") from exc
    return Step(kind, params)


def _coerce(value: Any, hint: Any, what: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):  # keep_zeros = true reads naturally
            return str(value).lower()
    elif hint is dict:
        if isinstance(value, dict):
            return value
    elif typing.get_origin(hint) is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return tuple(value)
    name = getattr(hint, "__name__", None) or "list of strings"
    raise RecipeError(f"{what} must be {_article(name)}, not {value!r}")


def _check_order(steps: tuple[Step, ...], where: str) -> None:
    """What cannot work in this order is refused before any work."""
    seen: list[str] = []
    for n, s in enumerate(steps, 1):
        p = s.params
        if s.kind in MODEL_KINDS and "export" in seen:
            raise RecipeError(f"{where}: step {n} ({s.kind}) comes after an export; exports go last")
        if s.kind == "prune" and p.method == "structured" and "lowrank" in seen:
            raise RecipeError(f"{where}: step {n} (prune): structured pruning cannot cut factorized layers; "
                              "prune before lowrank")
        if s.kind in ("prune", "lowrank", "recover") and "quantize" in seen:
            raise RecipeError(f"{where}: step {n} ({s.kind}) after quantize would move the weights off the int4 "
                              "grid; quantize last, just before export")
        seen.append(s.kind)


# -- helpers -----------------------------------------------------------------------------------
def _choice(key: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{key} must be one of {', '.join(allowed)}, not {value!r}")


def _fraction(key: str, value: float) -> None:
    if not 0.0 <= value < 1.0 and not (key in ("energy", "size") and value == 1.0):
        raise ValueError(f"{key} is a fraction in [0, 1), not {value}")


def _hint(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _article(name: str) -> str:
    return {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
            "dict": "a table"}.get(name, f"a {name}")


def _plain(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)
