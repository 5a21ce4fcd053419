"""The edgeslm command: help, one-line errors with non-zero exits, run/info/verify/export.

Exports here use the default format, onnx: those tests need the onnx backend and skip without it."""

import json
import shutil
import subprocess
import sys

import pytest

from edgeslm.testing import requires_export, requires_onnx
from edgeslm.cli import main


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("verb", [[], ["export"], ["run"], ["verify"], ["info"], ["models"]])
def test_every_verb_has_help(verb, capsys):
    code, out, _ = run([*verb, "--help"], capsys)
    assert code == 0 and "Usage: edgeslm" in out


@requires_onnx  # the default format's exporter is looked up before the model
def test_unknown_model_is_one_line(capsys, tmp_path):
    code, out, err = run(["export", "smolm2-135m", "-o", str(tmp_path / "o")], capsys)
    assert code == 1
    assert err.startswith("error: ") and err.count("\n") == 1 and "Did you mean" in err
    assert "Traceback" not in err


@requires_export
@requires_onnx  # the default export format
def test_corrupt_gguf_is_one_line(capsys, tmp_path, tiny_gguf):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(tiny_gguf.read_bytes()[:4096])
    code, _, err = run(["export", str(bad), "-o", str(tmp_path / "o")], capsys)
    assert code == 1 and err.startswith("error: ") and "truncated" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


@requires_export
def test_tampered_bundle_fails_verify_and_run(capsys, tmp_path, onnx_bundle):
    b = tmp_path / "b"
    shutil.copytree(onnx_bundle, b)
    code, out, _ = run(["verify", str(b)], capsys)
    assert code == 0 and out.startswith("ok:")
    data = bytearray((b / "model.onnx").read_bytes())
    data[100] ^= 0xFF
    (b / "model.onnx").write_bytes(bytes(data))
    for verb in (["verify", str(b)], ["run", str(b), "--prompt", "hi"]):
        code, _, err = run(verb, capsys)
        assert code == 1 and "model.onnx" in err and err.count("\n") == 1


@requires_export
def test_run_streams_and_reports_json(capsys, onnx_bundle):
    code, out, err = run(["run", str(onnx_bundle), "--prompt", "The capital", "-n", "5", "--json"], capsys)
    assert code == 0
    res = json.loads(out)
    assert res["metrics"]["prompt_tokens"] > 0 and len(res["token_ids"]) <= 5
    code, out, err = run(["run", str(onnx_bundle), "--chat", "--prompt", "hi", "-n", "4", "--system", "Be brief."], capsys)
    assert code == 0 and "tok/s decode" in err


@requires_export
def test_info_json(capsys, onnx_bundle):
    code, out, _ = run(["info", str(onnx_bundle), "--json"], capsys)
    assert code == 0 and json.loads(out)["format"] == "onnx"


@requires_export
@requires_onnx  # the default export format
def test_export_refuses_non_empty_dir(capsys, tmp_path, tiny_hf):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "x").write_text("keep me")
    code, _, err = run(["export", str(tiny_hf), "-o", str(tmp_path / "o")], capsys)
    assert code == 1 and "not empty" in err and (tmp_path / "o" / "x").read_text() == "keep me"


@requires_export
def test_unknown_format(capsys, tmp_path, tiny_hf):
    code, _, err = run(["export", str(tiny_hf), "--format", "tensorrt", "-o", str(tmp_path / "o")], capsys)
    assert code == 1 and "no exporter for format 'tensorrt'" in err


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "edgeslm", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "edgeslm" in out.stdout


@requires_export
@requires_onnx  # the default export format
def test_export_option_and_engine_option(capsys, tmp_path, tiny_hf):
    onnx = pytest.importorskip("onnx", reason="needs the onnx backend's export side: pip install -e 'backends/onnx[export]'")

    out = tmp_path / "plain"
    code, _, err = run(["export", str(tiny_hf), "-o", str(out), "--option", "fused_ops=false", "--parity-tokens", "4",
                        "--context-length", "64"], capsys)
    assert code == 0, err
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx"), load_external_data=False).graph.node}
    assert "RMSNormalization" not in ops and json.loads((out / "manifest.json").read_text())["artifacts"]["opset"] == 20
    code, out_text, err = run(["run", str(out), "--prompt", "hi", "-n", "3", "--engine-option", "io_binding=false",
                               "--json"], capsys)
    assert code == 0, err
    code, _, err = run(["export", str(tiny_hf), "-o", str(tmp_path / "x"), "--option", "nokeyvalue"], capsys)
    assert code == 2 and "KEY=VALUE" in err


@requires_export
@requires_onnx  # the default export format
def test_export_into_missing_parent_folders(capsys, tmp_path, tiny_hf):
    out = tmp_path / "a" / "b" / "bundle"
    code, _, err = run(["export", str(tiny_hf), "-o", str(out), "--no-parity", "--context-length", "32"], capsys)
    assert code == 0, err
    assert (out / "manifest.json").is_file() and not list(out.parent.glob(".edgeslm-export-*"))
