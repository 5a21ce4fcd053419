"""Careless input to the CLI: one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import io
import sys

import pytest

from edgeslm.cli import main
from edgeslm.testing import requires_export


def run(argv, capsys, stdin: bytes | None = None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8", errors="strict"))
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line(code, err, fragment, exit_code=1):
    assert code == exit_code, err
    assert "Traceback" not in err and fragment in err, err
    if exit_code == 1:
        assert err.startswith("error: ") and err.count("\n") == 1, err


@requires_export
@pytest.mark.parametrize("argv, stdin, fragment", [
    (["--prompt", "caf\udce9"], None, "not valid UTF-8: byte 0xe9 at character 3"),  # what argv gives for b"caf\xe9"
    (["--prompt", "x\ud800"], None, "lone surrogate U+D800"),
    ([], b"caf\xe9 au lait", "not valid UTF-8: byte 0xe9"),  # stdin, even in a strict UTF-8 locale
    (["--chat", "--prompt", "\udcff", "--system", "hi"], None, "byte 0xff at character 0"),
])
def test_run_bad_generation_input(onnx_bundle, capsys, monkeypatch, argv, stdin, fragment):
    code, _, err = run(["run", onnx_bundle, "-n", "2", *argv], capsys, stdin, monkeypatch)
    assert_one_line(code, err, fragment)


@pytest.mark.parametrize("argv, fragment", [
    (["-t", "0.8", "--seed", "-1"], "seed must be an integer >= 0"),
    (["-t", "nan"], "temperature must be a finite number"),
    (["-t", "0.8", "--top-k", "-3"], "top_k must be >= 0"),
    (["-t", "0.8", "--top-p", "nan"], "top_p must be in (0, 1]"),
])
def test_run_bad_sampling_values_are_usage_errors(tmp_path, capsys, argv, fragment):
    """Exit 2 like click's usage errors, before any bundle is opened."""
    code, _, err = run(["run", tmp_path / "no-bundle", "-p", "hi", "-n", "2", *argv], capsys)
    assert_one_line(code, err, fragment, exit_code=2)


def test_key_without_cryptography_names_the_extra(tmp_path, capsys, monkeypatch):
    """A device install without the sign extra: --key must say what to install."""
    from edgeslm.bundle import write_manifest

    b = tmp_path / "b"
    b.mkdir()
    (b / "model.onnx").write_bytes(b"graph")
    write_manifest(b, {"format": "onnx", "artifacts": {"model": "model.onnx"},
                       "spec": {"architecture": "llama", "vocab_size": 8, "hidden_size": 8, "num_layers": 1,
                                "num_heads": 1, "num_kv_heads": 1, "head_dim": 8, "intermediate_size": 8,
                                "context_length": 8}})
    (tmp_path / "k.pub").write_text("-----BEGIN PUBLIC KEY-----\n")
    for name in [m for m in sys.modules if m == "cryptography" or m.startswith("cryptography.")]:
        monkeypatch.setitem(sys.modules, name, None)  # import cryptography now raises ImportError
    monkeypatch.setitem(sys.modules, "cryptography", None)
    for verb in ("verify", "run"):
        code, _, err = run([verb, b, "--key", tmp_path / "k.pub", *(["-p", "hi"] if verb == "run" else [])], capsys)
        assert_one_line(code, err, "pip install 'edgeslm[sign]'")


@pytest.mark.parametrize("verb", ["info", "verify", "run", "bench"])
def test_bundle_verbs_on_missing_paths_files_and_empty_folders(tmp_path, capsys, verb):
    (tmp_path / "file.txt").write_text("not a bundle")
    (tmp_path / "empty").mkdir()
    extra = ["-p", "hi"] if verb == "run" else []
    for target, fragment in [(tmp_path / "nope", "not a bundle directory"), (tmp_path / "file.txt", "not a bundle directory"),
                             (tmp_path / "empty", "no manifest.json")]:
        code, _, err = run([verb, target, *extra], capsys)
        assert code == 1 and "Traceback" not in err and fragment in err and err.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.parametrize("option, value", [("--runs", "0"), ("--warmup", "-1"), ("--prompt-tokens", "0"),
                                           ("--new-tokens", "0"), ("--threads", "0")])
def test_bench_refuses_counts_that_cannot_run(tmp_path, capsys, option, value):
    code, _, err = run(["bench", tmp_path, option, value], capsys)
    assert_one_line(code, err, "is not in the range", exit_code=2)


def test_output_folders_that_cannot_be_made(tmp_path, capsys):
    (tmp_path / "file.txt").write_text("in the way")
    under_file = tmp_path / "file.txt" / "out"
    for argv in (["export", "smollm2-135m", "-o", under_file], ["micro", "--text", tmp_path / "file.txt", "-o", under_file],
                 ["compress", "smollm2-135m", "--sparsity", "0.1", "-o", under_file]):
        code, _, err = run(argv, capsys)  # refused while parsing: before any model is loaded
        assert_one_line(code, err, "'" + str(tmp_path / "file.txt") + "' is a file", exit_code=2)
    pytest.importorskip("cryptography")
    code, _, err = run(["keys", "generate", under_file / "release"], capsys)
    assert_one_line(code, err, "cannot create the key folder")


def test_keys_id_of_a_missing_file(tmp_path, capsys):
    pytest.importorskip("cryptography")
    code, _, err = run(["keys", "id", tmp_path / "nope.pub"], capsys)
    assert_one_line(code, err, "no such key file")


def test_library_output_errors_are_edgeslm_errors(tmp_path):
    from edgeslm.errors import OutputError
    from edgeslm.outputs import make_dir

    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="exists and is not a folder"):
        make_dir(tmp_path / "f")
    with pytest.raises(OutputError, match="is a file"):
        make_dir(tmp_path / "f" / "sub")
    assert make_dir(tmp_path / "a" / "b").is_dir()
