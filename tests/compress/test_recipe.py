"""`edgeslm recipe run`: a recipe checked before any work, run step by step with a state file,
stopped (--stop-after), interrupted (Ctrl-C in the middle of recover), resumed, reported, and
its bundle run by `edgeslm run`."""

import _thread
import dataclasses
import json
import threading
import time
from pathlib import Path

import pytest

from edgeslm.compress.recipe import RecipeError, builtin_recipes, load_recipe, parse_recipe
from edgeslm.testing import CORPUS, requires_export

pytestmark = requires_export

RECIPE = """
name = "tiny-prune-recover-int4"
[[step]]
kind = "prune"
method = "structured"
heads = 0.5
mlp = 0.5
[[step]]
kind = "recover"
text = "train.txt"          # relative to the recipe file
steps = 60
seq_len = 32
batch_size = 2
checkpoint_every = 2
[[step]]
kind = "quantize"
method = "rtn"
[[step]]
kind = "export"
format = "onnx"             # int4 (after quantize)
context_length = 64
parity_tokens = 8
options = {accuracy_level = 0}
"""


def _recipe(tmp_path, text=RECIPE) -> Path:
    (tmp_path / "train.txt").write_text("\n".join(CORPUS * 3))
    f = tmp_path / "r.toml"
    f.write_text(text)
    return f


@pytest.mark.parametrize("body, message", [
    ('[[step]]\nkind = "prnue"', "unknown kind 'prnue' (did you mean 'prune'?)"),
    ('[[step]]\nkind = "prune"\nmethod = "wanda"\namout = 0.5', "unknown key 'amout' (did you mean 'amount'?)"),
    ('[[step]]\nkind = "prune"\nheads = "half"', "step 1 (prune): heads must be a number, not 'half'"),
    ('[[step]]\nkind = "prune"\nheads = 1.5', "heads is a fraction in [0, 1)"),
    ('[[step]]\nkind = "prune"\nmethod = "wanda"', "wanda needs amount"),
    ('[[step]]\nkind = "lowrank"', "exactly one of energy or size"),
    ('[[step]]\nkind = "recover"\nsteps = 10\ntokens = 100', "steps or tokens, not both"),
    ('[[step]]\nkind = "recover"\nhidden_weight = -1.0', "hidden_weight must be >= 0"),
    ('[[step]]\nkind = "quantize"\nmethod = "awq"', "method must be one of rtn, gptq"),
    ('[[step]]\nkind = "quantize"\n[[step]]\nkind = "recover"', "step 2 (recover) after quantize"),
    ('[[step]]\nkind = "lowrank"\nsize = 0.5\n[[step]]\nkind = "prune"\nheads = 0.5', "prune before lowrank"),
    ('[[step]]\nkind = "export"\n[[step]]\nkind = "quantize"', "exports go last"),
    ('nmae = "x"\n[[step]]\nkind = "export"', "unknown key 'nmae' (did you mean 'name'?)"),
    ('name = "x"', "no steps"),
])
def test_bad_recipes_are_refused_with_the_step_and_key(body, message):
    from edgeslm.compress.recipe import tomllib  # tomli on Python 3.10

    with pytest.raises(RecipeError) as err:
        parse_recipe(tomllib.loads(body), where="r.toml")
    assert message in str(err.value)


def test_cli_refuses_before_any_work(tiny_hf, tmp_path, capsys):
    """Files, exporters and precisions are checked before the model loads; nothing is written."""
    from edgeslm.cli import main

    for body, message in [
        ('[[step]]\nkind = "recover"\ntext = "missing.txt"', "text file missing.txt not found"),
        ('[[step]]\nkind = "export"\nformat = "onnx"\nprecision = "int3"', "not 'int3'"),
        ('[[step]]\nkind = "export"\ntarget = "no-such-device"', "no-such-device"),
    ]:
        f = tmp_path / "bad.toml"
        f.write_text(body)
        out = tmp_path / "out"
        assert main(["recipe", "run", str(f), "-m", str(tiny_hf), "-o", str(out)]) == 1
        assert message in capsys.readouterr().err
        assert not out.exists()
    assert main(["recipe", "run", "prune25-recover-int", "-m", str(tiny_hf), "-o", str(out)]) == 1
    assert "did you mean 'prune25-recover-int4'" in capsys.readouterr().err


def test_builtin_recipes_and_the_help_example_are_valid(capsys):
    from edgeslm.compress.recipe import tomllib  # tomli on Python 3.10

    from edgeslm.cli import main
    from edgeslm.cli.recipe_cmd import EXAMPLE

    assert {"prune25-recover-int4", "wanda50-recover", "lowrank20-recover", "int4"} <= set(builtin_recipes())
    for name in builtin_recipes():
        rec = load_recipe(name)
        again = parse_recipe(tomllib.loads(rec.to_toml()))  # `recipe show` prints a valid recipe
        assert [s.digest() for s in again.steps] == [s.digest() for s in rec.steps]
    assert [s.kind for s in parse_recipe(tomllib.loads(EXAMPLE.replace("\b", ""))).steps] == \
        ["prune", "recover", "quantize", "export"]
    assert main(["recipe", "list"]) == 0
    assert "prune25-recover-int4" in capsys.readouterr().out
    assert main(["recipe", "run", "--help"]) == 0
    helptext = capsys.readouterr().out
    assert "--resume" in helptext and 'kind = "recover"' in helptext  # the help teaches with an example


def test_digests_of_steps_written_before_keys_were_added_still_match():
    """A run started before OWL (prune) and hidden-state matching (recover) existed resumes with its
    finished steps kept: the digests below were computed by edgeslm at 21f196a, before those keys."""
    from edgeslm.compress.recipe import ADDED_KEYS, PruneStep, RecoverStep, Step

    prune = Step("prune", PruneStep(method="wanda", amount=0.5))
    recover = Step("recover", RecoverStep(steps=100, lr=1e-4))
    assert prune.digest() == "5ef3a725c9969d98" and recover.digest() == "1cf995c83db808c8"
    # the keys still count when they change what the step does
    assert Step("prune", PruneStep(method="wanda", amount=0.5, layerwise="owl")).digest() != prune.digest()
    assert Step("prune", PruneStep(method="wanda", amount=0.5, owl_lambda=0.1)).digest() != prune.digest()
    assert Step("recover", RecoverStep(steps=100, lr=1e-4, hidden_weight=1.0)).digest() != recover.digest()
    # every listed key exists and its listed value is the field's default (what old recipes get)
    for kind, cls in (("prune", PruneStep), ("recover", RecoverStep)):
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        assert all(defaults[k] == v for k, v in ADDED_KEYS[kind].items()), kind


def test_recipe_runs_stops_is_interrupted_resumes_and_its_bundle_runs(family_source, tmp_path, capsys):
    from edgeslm.cli import main

    folder = str(family_source("gemma3").path)
    recipe, out = _recipe(tmp_path), tmp_path / "out"
    state = lambda: json.loads((out / "recipe_state.json").read_text())  # noqa: E731

    # 1. a step limit: prune only; the report so far has the source and step 1
    assert main(["recipe", "run", str(recipe), "-m", folder, "-o", str(out), "--stop-after", "1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [s["status"] for s in summary["steps"]] == ["done", "pending", "pending", "pending"]
    assert summary["complete"] is False and len(summary["report"]) == 2
    assert (out / "01-prune" / "config.json").is_file()
    pruned_mtime = (out / "01-prune" / "model.safetensors").stat().st_mtime_ns
    # without --resume an existing run is refused
    assert main(["recipe", "run", str(recipe), "-m", folder, "-o", str(out)]) == 1
    assert "--resume continues it" in capsys.readouterr().err

    # 2. Ctrl-C in the middle of recover (the first checkpoint written): exit 130, state says so
    ckpt = out / "02-recover" / "checkpoints"
    fired = threading.Event()

    def interrupt_when_checkpointed():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not fired.is_set():
            if any(ckpt.glob("step-*.pt")):
                fired.set()
                _thread.interrupt_main()
                return
            time.sleep(0.002)

    watcher = threading.Thread(target=interrupt_when_checkpointed, daemon=True)
    watcher.start()
    try:
        rc = main(["recipe", "run", str(recipe), "-o", str(out), "--resume", "--no-eval"])
    except KeyboardInterrupt:  # pragma: no cover - only if the interrupt landed after main returned
        pytest.fail("the interrupt arrived after the run had finished")
    fired.set()
    watcher.join()
    assert rc == 130, capsys.readouterr().err
    assert [s["status"] for s in state()["steps"]] == ["done", "interrupted", "pending", "pending"]
    assert any(ckpt.glob("step-*.pt"))
    capsys.readouterr()

    # 3. resume: prune kept, recover continues from its checkpoint, quantize + export, report
    assert main(["recipe", "run", str(recipe), "-o", str(out), "--resume", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    steps = summary["steps"]
    assert summary["complete"] and [s["status"] for s in steps] == ["done"] * 4
    assert (out / "01-prune" / "model.safetensors").stat().st_mtime_ns == pruned_mtime
    assert steps[1]["resumed_from"].startswith("step-") and not ckpt.exists()  # checkpoints go when done
    assert steps[3]["format"] == "onnx" and steps[3]["precision"] == "int4"
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [r["label"].split(".")[0] for r in rows] == ["source (tiny-gemma3)", "1", "2", "3", "4"]
    assert rows[0]["top1_agreement"] == 1.0 and rows[1]["parameters"] < rows[0]["parameters"]
    assert all(r["cpu_minutes"] >= 0 for r in rows[1:]) and rows[4]["runner"] == "onnx"
    assert "| 4. onnx int4 bundle |" in (out / "report.md").read_text()
    history = json.loads((out / "03-quantize" / "edgeslm_compression.json").read_text())
    assert [h["technique"] for h in history] == ["structured_prune", "distill", "int4_rtn"]

    # 4. the exported bundle runs
    assert main(["run", summary["bundle"], "--raw", "--prompt", "def fibonacci", "-n", "4", "-q"]) == 0
    assert capsys.readouterr().out.strip()

    # a finished run resumed: nothing to do, the same report
    assert main(["recipe", "run", str(recipe), "-o", str(out), "--resume", "--json"]) == 0
    again = captured = capsys.readouterr()
    assert "all 4 steps done earlier, kept" in captured.err
    assert json.loads(again.out)["report"] == json.loads(json.dumps(summary["report"]))

    # 5. a changed step reruns from there; the steps before it are kept
    recipe.write_text(RECIPE.replace('method = "rtn"', 'method = "gptq"\ncalibration_tokens = 64'))
    assert main(["recipe", "run", str(recipe), "-o", str(out), "--resume", "--no-eval"]) == 0
    err = capsys.readouterr().err
    assert "[1/4] structured pruning: heads -50%, MLP -50%: done earlier, kept" in err
    assert "[2/4] recover" in err and "done earlier" in err.split("[2/4]")[1].split("\n")[0]
    assert "✓ [3/4] int4 weights (gptq" in err and "✓ [4/4] export to onnx" in err


def test_target_goes_to_the_last_export_or_adds_one():
    from edgeslm.compress.recipe_run import preflight, with_target

    rec = with_target(load_recipe("int4"), "raspberry-pi-5")
    assert [s.kind for s in rec.steps] == ["quantize", "export"] and rec.steps[-1].params.target == "raspberry-pi-5"
    assert rec.steps[-1].params.format == "onnx"  # the recipe's format stays; the target plans the rest
    rec = with_target(parse_recipe({"step": [{"kind": "prune", "method": "wanda", "amount": 0.5}]}), "raspberry-pi-5")
    assert [s.kind for s in rec.steps] == ["prune", "export"]
    preflight(rec)  # a known target passes
    with pytest.raises(RecipeError, match="step 2 \\(export\\)"):
        preflight(with_target(rec, "no-such-device"))


def test_json_results_and_errors_are_one_document(tmp_path, capsys):
    from edgeslm.cli import main

    assert main(["recipe", "list", "--json"]) == 0
    assert "prune25-recover-int4" in [r["name"] for r in json.loads(capsys.readouterr().out)]
    assert main(["recipe", "show", "int4", "--json"]) == 0
    assert [s["kind"] for s in json.loads(capsys.readouterr().out)["steps"]] == ["quantize", "export"]
    f = tmp_path / "bad.toml"
    f.write_text('[[step]]\nkind = "distil"')
    assert main(["recipe", "run", str(f), "-m", "smollm2-135m", "-o", str(tmp_path / "o"), "--json"]) == 1
    err = json.loads(capsys.readouterr().out)
    assert err["type"] == "RecipeError" and "unknown kind 'distil'" in err["error"]


def test_target_export_after_quantize_is_int4_and_planned(tiny_hf, tmp_path, capsys):
    pytest.importorskip("edgeslm_onnx")
    from edgeslm.bundle import Bundle
    from edgeslm.cli import main

    f = tmp_path / "q.toml"
    f.write_text('[[step]]\nkind = "quantize"\n[[step]]\nkind = "export"\nformat = "onnx"\ncontext_length = 64\n'
                 'parity_tokens = 8\noptions = {accuracy_level = 0}\n')
    out = tmp_path / "out"
    assert main(["recipe", "run", str(f), "-m", str(tiny_hf), "-o", str(out), "--target", "raspberry-pi-5",
                 "--no-eval", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    manifest = Bundle.open(summary["bundle"]).manifest
    assert (manifest["format"], manifest["precision"], manifest["target"]) == ("onnx", "int4", "raspberry-pi-5")
    assert summary["report"] == [] and not (out / "report.md").exists()


def test_recover_on_teacher_text_from_the_step_input_and_a_bad_model_leaves_nothing(tiny_hf, tmp_path, capsys):
    from edgeslm.cli import main

    f = tmp_path / "r.toml"
    f.write_text('[[step]]\nkind = "prune"\nmethod = "magnitude"\namount = 0.5\n'
                 '[[step]]\nkind = "recover"\nteacher = "input"\nsteps = 2\nseq_len = 16\nbatch_size = 2\n'
                 'generate_tokens = 8\nsamples = 1\ncheckpoint_every = 0\nhidden_weight = 0.5\n')
    out = tmp_path / "out"
    assert main(["recipe", "run", str(f), "-m", str(tmp_path / "no-such-model"), "-o", str(out)]) == 1
    assert not out.exists()
    capsys.readouterr()
    assert main(["recipe", "run", str(f), "-m", str(tiny_hf), "-o", str(out), "--no-eval", "--json"]) == 0
    steps = json.loads(capsys.readouterr().out)["steps"]
    assert [s["status"] for s in steps] == ["done", "done"]
    assert json.loads((out / "02-recover" / "train_ids.json").read_text())  # the teacher's samples, kept
    from edgeslm.compress.prune import sparsity
    from edgeslm.compress.model import load_model

    assert sparsity(load_model(out / "02-recover").module) == pytest.approx(0.5)  # keep_zeros = auto
    recovered = load_model(out / "02-recover").spec.extra["compression"][-1]
    assert recovered["hidden_weight"] == 0.5 and recovered["hidden_pairs"] == [[0, 0], [1, 1]]  # same depth
