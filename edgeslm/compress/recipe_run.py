"""Running a recipe: each step writes its folder and the state file; ``resume`` skips finished steps.

::

    OUT/
      recipe.toml            the recipe as run (every default written out)
      recipe_state.json      per step: status, digest of its parameters, CPU and wall seconds, report row
      01-prune/              a Hugging Face folder (every model step writes one)
      02-recover/            ... + checkpoints/ while it trains (removed when the step is done)
      03-quantize/
      04-export/             a verified bundle
      report.md, report.json params, bytes, top-1 / KL / perplexity vs the source, CPU-minutes per step

A step is skipped on resume when it is done, its folder is there, and it and every step before
it have the parameters they had (a digest each): change step 3 and steps 1-2 are kept, 3 onwards
rerun. A ``recover`` step that was interrupted continues from its last checkpoint (the
distillation's own resume). Everything that can be checked without the model (kinds, keys,
values, text files, exporters and precisions, targets) is checked before any work.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from ..outputs import make_dir
from ..progress import NULL_STEPS, Steps
from .recipe import MODEL_KINDS, ExportStep, Recipe, RecipeError, Step

STATE_FILE = "recipe_state.json"
STATE_VERSION = 1
TRAIN_IDS = "train_ids.json"


def with_target(recipe: Recipe, target: str) -> Recipe:
    """The recipe exporting for ``target``: the last export step gets it, or one is appended."""
    steps = list(recipe.steps)
    idx = [i for i, s in enumerate(steps) if s.kind == "export"]
    if idx:
        s = steps[idx[-1]]
        steps[idx[-1]] = Step("export", dataclasses.replace(s.params, target=target))
    else:
        steps.append(Step("export", ExportStep(target=target)))
    return dataclasses.replace(recipe, steps=tuple(steps))


def step_dirs(recipe: Recipe) -> list[str]:
    return [f"{i:02d}-{s.kind}" for i, s in enumerate(recipe.steps, 1)]


def preflight(recipe: Recipe, base: Path | None = None) -> None:
    """What can be refused before loading the model: text files, exporters, precisions, targets."""
    from ..errors import EdgeSLMError

    for n, s in enumerate(recipe.steps, 1):
        p = s.params
        for key in ("calibration", "text"):
            f = getattr(p, key, "") or (recipe.calibration if key == "calibration" else "")
            if f and not resolve(f, base).is_file():
                raise RecipeError(f"step {n} ({s.kind}): {key} file {f} not found")
        if s.kind != "export":
            continue
        try:
            if p.target:
                from ..targets.catalog import load_target

                load_target(p.target)
            if p.format or not p.target:
                from ..exporting import _exporter
                from ..plugins import default_format

                _exporter(p.format or default_format(), p.precision or None)
        except EdgeSLMError as exc:
            raise RecipeError(f"step {n} (export): {exc}") from exc


def resolve(path: str, base: Path | None) -> Path:
    """A file named in a recipe: relative to the recipe file's folder, else to the working folder."""
    p = Path(path).expanduser()
    if not p.is_absolute() and base is not None and (base / p).exists():
        return base / p
    return p


class Runner:
    """Runs ``recipe`` on ``model`` into ``out_dir``; see the module docstring."""

    def __init__(self, recipe: Recipe, model: str, out_dir: str | Path, *, resume: bool = False,
                 stop_after: int | None = None, evaluate: bool = True, speed_tokens: int = 0,
                 steps: Steps = NULL_STEPS, progress: bool = False, note: Callable[[str], None] = lambda s: None,
                 base: Path | None = None):
        self.recipe, self.model, self.out = recipe, model, Path(out_dir)
        self.resume, self.stop_after, self.evaluate, self.speed_tokens = resume, stop_after, evaluate, speed_tokens
        self.steps, self.progress, self.note, self.base = steps, progress, note, base
        self.dirs = step_dirs(recipe)
        self._spinner = Steps(enabled=steps.enabled, stream=steps.stream, min_report_s=float("inf"))

    # -- state -----------------------------------------------------------------------------
    def _load_state(self) -> dict[str, Any] | None:
        f = self.out / STATE_FILE
        if not f.is_file():
            return None
        try:
            state = json.loads(f.read_text())
        except ValueError as exc:
            raise RecipeError(f"{f}: unreadable state ({exc}); remove it to start over") from exc
        if state.get("version") != STATE_VERSION:
            raise RecipeError(f"{f}: state version {state.get('version')} is not {STATE_VERSION}")
        return state

    def _save(self) -> None:
        tmp = self.out / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(self.state, indent=2, default=str) + "\n")
        tmp.replace(self.out / STATE_FILE)

    def _prepare(self) -> None:
        if self.stop_after is not None and not 1 <= self.stop_after <= len(self.recipe.steps):
            raise RecipeError(f"--stop-after must be in 1..{len(self.recipe.steps)}")
        preflight(self.recipe, self.base)
        state = self._load_state()
        if state is not None and not self.resume:
            done = sum(1 for s in state["steps"] if s.get("status") == "done")
            raise RecipeError(f"{self.out} holds a recipe run ({done} of {len(state['steps'])} steps done); "
                              "--resume continues it, or choose another -o")
        if state is None and self.out.is_dir() and any(self.out.iterdir()):
            raise RecipeError(f"{self.out} exists and is not a recipe run; choose an empty or new folder")
        self.model = _model_id(self.model) if self.model else ""
        if state is not None:
            if self.model and state["model"] != self.model:
                raise RecipeError(f"{self.out} was started from {state['model']}, not {self.model}")
            self.model = state["model"]
        if not self.model:
            raise RecipeError("no model: give -m MODEL (or model = \"...\" in the recipe)")
        old = (state or {}).get("steps", [])
        self.state = {"version": STATE_VERSION, "recipe": self.recipe.name, "model": self.model,
                      "source_row": (state or {}).get("source_row"), "steps": []}
        first_rerun, self._stale = None, []
        for i, s in enumerate(self.recipe.steps):
            entry = {"index": i + 1, "kind": s.kind, "what": s.params.describe(), "digest": s.digest(),
                     "output": self.dirs[i], "status": "pending"}
            prev = old[i] if i < len(old) else None
            same = bool(prev) and prev.get("digest") == entry["digest"] and prev.get("output") == entry["output"]
            folder = self.out / self.dirs[i]
            if first_rerun is None and same and prev.get("status") == "done" and folder.is_dir():
                entry = {**prev, "what": entry["what"]}  # done, with the same parameters: kept
            else:
                # the first step to (re)run keeps its folder only when its parameters are unchanged (an
                # interrupted recover resumes from its checkpoints); every later output is stale
                keep = first_rerun is None and same
                first_rerun = i if first_rerun is None else first_rerun
                if not keep and folder.exists():
                    self._stale.append(folder)
            self.state["steps"].append(entry)

    def _commit(self) -> None:
        """Write OUT's recipe and state (after the model loaded: a typo in -m leaves no run behind)."""
        make_dir(self.out)
        for folder in self._stale:
            shutil.rmtree(folder)
        (self.out / "recipe.toml").write_text(self.recipe.to_toml())
        self._save()

    # -- running ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from .evaluate import Evaluator
        from .model import load_model

        self._prepare()
        n = len(self.recipe.steps)
        if all(e["status"] == "done" and (e.get("row") or not self.evaluate) for e in self.state["steps"]) \
                and (self.state["source_row"] or not self.evaluate):
            self._commit()
            self.note(f"all {n} steps done earlier, kept")
            return self._finish(None)  # nothing to run: the model is not even loaded
        with self.steps.step(f"Loading {self.model}"):
            self.source = load_model(self.model)
        self._commit()
        self.ev = None
        if self.evaluate:
            with self.steps.step("Reference run of the source (for the report)"):
                self.ev = Evaluator(self.source)
            if self.state["source_row"] is None:
                self.state["source_row"] = self._measure(f"source ({self.source.name})", self.source)
                self._save()
        current, current_dir = self.source, None
        stopped = None
        for i, s in enumerate(self.recipe.steps):
            entry, folder = self.state["steps"][i], self.out / self.dirs[i]
            title = f"[{i + 1}/{n}] {entry['what']}"
            if self.stop_after is not None and i >= self.stop_after:
                stopped = self.stop_after
                self.note(f"stopped after step {stopped} of {n} (--stop-after); --resume continues")
                break
            if entry["status"] == "done":
                self.note(f"{title}: done earlier, kept ({self.dirs[i]})")
                if s.kind in MODEL_KINDS:
                    current, current_dir = None, folder
                if self.evaluate and not entry.get("row"):  # interrupted while being measured
                    if s.kind in MODEL_KINDS:
                        with self.steps.step(f"Loading {folder.name}"):
                            current = load_model(folder)
                    self._measure_step(entry, s, current if s.kind in MODEL_KINDS else None, folder)
                continue
            if current is None:
                with self.steps.step(f"Loading {current_dir.name}"):
                    current = load_model(current_dir)
            result = self._run_step(s, current, entry, folder, title)
            if s.kind in MODEL_KINDS:
                current, current_dir = result, folder
            if self.evaluate:
                self._measure_step(entry, s, result if s.kind in MODEL_KINDS else None, folder)
        return self._finish(stopped)

    def _run_step(self, s: Step, current, entry: dict, folder: Path, title: str):
        """Run one step on ``current``, its state saved before and after (an interrupt or an error
        marks it, --resume reruns it); a model step's result is also saved to ``folder``."""
        entry.update(status="running", started=time.strftime("%Y-%m-%dT%H:%M:%S"))
        self._save()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        try:
            if s.kind in ("recover", "export"):  # their own progress (a loss bar; export's steps)
                self.note(f"{title} ...")
                result = getattr(self, f"_{s.kind}")(s.params, current, folder, entry)
            else:
                with self._spinner.step(title):  # our closing line below adds the CPU time
                    result = getattr(self, f"_{s.kind}")(s.params, current, folder, entry)
        except BaseException as exc:  # Ctrl-C or an error: the state says so, --resume reruns the step
            entry.update(status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                         error=str(exc) or type(exc).__name__)
            self._save()
            raise
        entry.update(status="done", cpu_seconds=round(time.process_time() - cpu0, 2),
                     wall_seconds=round(time.perf_counter() - wall0, 2))
        if s.kind in MODEL_KINDS:
            from .model import save_hf_folder

            save_hf_folder(result, folder)
            shutil.rmtree(folder / "checkpoints", ignore_errors=True)
            entry["parameters"] = result.spec.num_parameters
        self._save()
        self.note(f"✓ {title} ({entry['wall_seconds']:.1f} s, {entry['cpu_seconds'] / 60:.2f} CPU-min)")
        return result

    def _measure_step(self, entry, step: Step, model, folder: Path) -> None:
        """The step's report row (a model step: its torch model; an export: the bundle's engine)."""
        i = entry["index"]
        label = f"{i}. {entry['what']}" if model is not None else \
            f"{i}. {entry['format']} {entry['precision']} bundle" + \
            (f" for {step.params.target}" if step.params.target else "")
        with self.steps.step(f"Measuring step {i} against the source"):
            entry["row"] = self._measure(label, model if model is not None else str(folder))
        self._save()

    def _measure(self, label: str, model) -> dict[str, Any]:
        from .report import measure

        return measure(label, model, self.ev, speed_tokens=self.speed_tokens)

    def _calibration(self, p) -> str | None:
        from .data import read_text

        f = getattr(p, "calibration", "") or self.recipe.calibration
        return read_text(resolve(f, self.base)) if f else None

    def _prune(self, p, model, folder, entry):
        text = self._calibration(p)
        if p.method == "structured":
            from .prune import StructuredPruneConfig, structured_prune

            cfg = StructuredPruneConfig(head_ratio=p.heads or p.amount, mlp_ratio=p.mlp or p.amount,
                                        heads_mode=p.heads_mode, calibration_tokens=p.calibration_tokens)
            return _technique(structured_prune, model, cfg, text)
        if p.method == "magnitude":
            from .prune import MagnitudePruneConfig, magnitude_prune

            return _technique(magnitude_prune, model, MagnitudePruneConfig(sparsity=p.amount))
        from .sparsity import SparsityConfig, activation_sparsify

        cfg = SparsityConfig(p.amount or 0.5, pattern=p.pattern, method=p.method, layerwise=p.layerwise,
                             owl_lambda=p.owl_lambda, owl_m=p.owl_m)
        return _technique(activation_sparsify, model, cfg, text, p.calibration_tokens)

    def _lowrank(self, p, model, folder, entry):
        from .lowrank import LowRankConfig, low_rank_factorize

        cfg = LowRankConfig(energy=p.energy or None, size_ratio=p.size or None, targets=p.targets, whiten=p.whiten,
                            allocation=p.allocation, calibration_tokens=p.calibration_tokens)
        return _technique(low_rank_factorize, model, cfg, self._calibration(p))

    def _quantize(self, p, model, folder, entry):
        from .gptq import QuantizeConfig, quantize_weights

        cfg = QuantizeConfig(method=p.method, group_size=p.group_size, calibration_tokens=p.calibration_tokens)
        return _technique(quantize_weights, model, cfg, self._calibration(p))

    def _recover(self, p, model, folder, entry):
        from .data import SEED_PROMPTS, read_text
        from .distill import DistillConfig, distill, latest_checkpoint, teacher_text
        from .model import derive

        if model is self.source:  # never train the teacher itself
            model = derive(model, copy.deepcopy(model.module), {"technique": "copy"}, name=model.name)
        teacher = self.source if p.teacher == "source" else \
            derive(model, copy.deepcopy(model.module), {"technique": "teacher_copy"}, name=model.name)
        make_dir(folder)
        ids_file = folder / TRAIN_IDS
        if ids_file.is_file():  # an interrupted run: the very same data
            data = json.loads(ids_file.read_text())
        elif p.text:
            data = [teacher.tokenizer.encode(read_text(resolve(p.text, self.base)))]
        else:
            with self.steps.step(f"Teacher writes {p.samples * len(SEED_PROMPTS)} samples of {p.generate_tokens} "
                                 "tokens"):
                data = teacher_text(teacher, SEED_PROMPTS, new_tokens=p.generate_tokens, samples=p.samples)
        ids_file.write_text(json.dumps(data))
        earlier = [s for s in self.recipe.steps[:entry["index"] - 1] if s.kind == "prune"]
        keep = p.keep_zeros == "true" or (p.keep_zeros == "auto" and any(s.params.method != "structured"
                                                                          for s in earlier))
        cfg = DistillConfig(steps=p.n_steps, seq_len=p.seq_len, batch_size=p.batch_size, lr=p.lr,
                            temperature=p.temperature, hard_weight=p.hard_weight, hidden_weight=p.hidden_weight,
                            checkpoint_every=p.checkpoint_every, keep_zeros=keep)
        last = latest_checkpoint(folder / "checkpoints")
        if last is not None:
            entry["resumed_from"] = last.name
            self.note(f"  resuming from {folder.name}/checkpoints/{last.name}")
        try:
            return distill(teacher, model, data, cfg, out_dir=folder, resume=last is not None,
                           progress=self.progress)
        except ValueError as exc:
            raise RecipeError(f"step {entry['index']} (recover): {exc}") from exc

    def _export(self, p, model, folder, entry):
        quantized = any(s.kind == "quantize" for s in self.recipe.steps[:entry["index"] - 1])
        precision = p.precision or ("int4" if quantized and not p.target else None)
        if quantized and p.target and not p.precision:  # the int4-grid weights: int4 where the target runs it
            from ..errors import EdgeSLMError
            from ..targets.catalog import load_target
            from ..targets.plan import plan_export

            try:
                plan_export(model.spec, load_target(p.target), format=p.format or None, precision="int4",
                            context=p.context_length or None)
                precision = "int4"
            except EdgeSLMError:
                self.note(f"note: {p.target} runs no int4 in the formats installed; its own precision is used")
        common = dict(precision=precision, context_length=p.context_length or None, parity_tokens=p.parity_tokens,
                      overwrite=True, steps=self.steps, options=dict(p.options))
        if p.target:
            from ..targets.plan import export_for_target

            bundle, _ = export_for_target(model, folder, p.target, format=p.format or None, echo=self.note, **common)
        else:
            from ..exporting import export_model

            bundle = export_model(model, folder, format=p.format or None, **common)
        entry["bundle"] = str(folder)
        entry["format"], entry["precision"] = bundle.format, bundle.manifest.get("precision")
        return bundle

    # -- the report ------------------------------------------------------------------------
    def _finish(self, stopped: int | None) -> dict[str, Any]:
        rows = []
        if self.state.get("source_row"):
            rows.append({**self.state["source_row"], "cpu_minutes": None, "wall_minutes": None})
        for e in self.state["steps"]:
            if e.get("status") == "done" and e.get("row"):
                rows.append({**e["row"], "cpu_minutes": e["cpu_seconds"] / 60, "wall_minutes": e["wall_seconds"] / 60})
        if rows:
            write_report(rows, self.out, self.recipe, self.model)
        bundles = [e["bundle"] for e in self.state["steps"] if e.get("bundle") and e.get("status") == "done"]
        return {"recipe": self.recipe.name, "model": self.model, "output": str(self.out),
                "steps": self.state["steps"], "stopped_after": stopped,
                "complete": all(e["status"] == "done" for e in self.state["steps"]),
                "bundle": bundles[-1] if bundles else None, "report": rows}


def _model_id(model: str) -> str:
    """A model argument as recorded in the state: a path made absolute (resume from any folder)."""
    p = Path(model).expanduser()
    return str(p.resolve()) if p.exists() else model


def _technique(fn, model, *args):
    try:
        return fn(model, *args)
    except ValueError as exc:  # a technique's refusal (e.g. nothing to factorize) is the user's to fix
        raise RecipeError(str(exc)) from exc


REPORT_COLUMNS = [  # (key, header, format)
    ("label", "step", "{}"),
    ("runner", "runs on", "{}"),
    ("parameters", "params", "{:,}"),
    ("bytes", "bytes", "{:,}"),
    ("zipped_bytes", "zipped bytes", "{:,}"),
    ("top1_agreement", "top-1 vs source", "{:.1%}"),
    ("kl_mean", "KL vs source (nats)", "{:.4f}"),
    ("perplexity", "perplexity", "{:.2f}"),
    ("decode_tokens_per_s", "decode tok/s", "{:.1f}"),
    ("cpu_minutes", "CPU-min", "{:.2f}"),
    ("wall_minutes", "wall-min", "{:.2f}"),
]


def write_report(rows: list[dict[str, Any]], out: Path, recipe: Recipe, model: str) -> None:
    from .report import to_markdown

    pre = (f"Recipe `{recipe.name}` ({recipe.source}) on `{model}`, measured by `edgeslm recipe run` against "
           "the source's torch model: 3 parity prompts x 32 greedy source tokens, teacher-forced; perplexity on "
           "a held-out paragraph. CPU-min: the step's process CPU time (measurement excluded).\n\n")
    (out / "report.md").write_text(f"# Recipe report\n\n{pre}{to_markdown(rows, notes=False, columns=REPORT_COLUMNS)}")
    (out / "report.json").write_text(json.dumps({"recipe": recipe.name, "model": model, "rows": rows}, indent=2,
                                                default=str) + "\n")
