"""`edgeslm run` as a user meets it: chat template by default, --raw, stdin, refused flags, options."""

import io
import json

import pytest

from edgeslm.cli import main
from edgeslm.testing import requires_export


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def run_json(argv, capsys):
    code, out, err = run([*argv, "--json"], capsys)
    assert code == 0, err
    return json.loads(out)


@requires_export
def test_chat_template_is_the_default_and_raw_turns_it_off(capsys, onnx_bundle):
    import edgeslm

    with edgeslm.load(onnx_bundle) as m:
        templated = m.tokenizer.encode(m.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}]))
        plain = m.tokenizer.encode("hi")
    default = run_json(["run", str(onnx_bundle), "-p", "hi", "-n", "3"], capsys)
    assert default["chat"] is True and default["metrics"]["prompt_tokens"] == len(templated)
    explicit = run_json(["run", str(onnx_bundle), "-p", "hi", "-n", "3", "--chat"], capsys)
    assert explicit["token_ids"] == default["token_ids"] and explicit["chat"] is True
    raw = run_json(["run", str(onnx_bundle), "-p", "hi", "-n", "3", "--raw"], capsys)
    assert raw["chat"] is False and raw["metrics"]["prompt_tokens"] == len(plain)
    sys_msg = run_json(["run", str(onnx_bundle), "-p", "hi", "-n", "3", "--system", "Be brief."], capsys)
    assert sys_msg["metrics"]["prompt_tokens"] > len(templated)


@requires_export
def test_stdin_loses_its_trailing_newline(capsys, monkeypatch, onnx_bundle):
    given = run_json(["run", str(onnx_bundle), "-p", "Why is the sky blue?", "-n", "4"], capsys)
    monkeypatch.setattr("sys.stdin", io.StringIO("Why is the sky blue?\n"))
    piped = run_json(["run", str(onnx_bundle), "-n", "4"], capsys)
    assert piped["token_ids"] == given["token_ids"]
    assert piped["metrics"]["prompt_tokens"] == given["metrics"]["prompt_tokens"]


@requires_export
@pytest.mark.parametrize("argv, code, message", [
    (["--engine-option", "bogus=1"], 1, "unknown onnx engine option 'bogus'; known: threads (int), providers (list), io_binding (bool)"),
    (["--engine-option", "io_binding=maybe"], 1, "io_binding='maybe': expected bool"),
    (["--raw", "--system", "x"], 2, "--system has no effect with --raw"),
    (["--raw", "--chat"], 2, "exclude each other"),
    (["--seed", "3"], 2, "--seed only applies when sampling"),
    (["--top-k", "5", "--top-p", "0.5"], 2, "--top-k, --top-p only apply when sampling"),
    (["--threads", "1", "--engine-option", "threads=2"], 2, "both given"),
    (["--providers", "cuda"], 1, "has no CUDAExecutionProvider (CUDA/TensorRT need the onnxruntime-gpu"),
    (["--engine-option", "providers=CUDAExecutionProvider,CPUExecutionProvider"], 1, "has no CUDAExecutionProvider"),
    (["--providers", "warp-drive"], 1, "unknown onnxruntime execution provider 'warp-drive'"),
])
def test_refused_options_are_one_line(capsys, onnx_bundle, argv, code, message):
    got, out, err = run(["run", str(onnx_bundle), "-p", "hi", "-n", "2", *argv], capsys)
    assert got == code and message in err and "Traceback" not in err, err
    if code == 1:
        assert err.startswith("error: ") and err.count("\n") == 1
    if "CUDA" in message:
        assert "available: " in err and "cpu (CPUExecutionProvider)" in err


@requires_export
def test_providers_parse_as_a_list(capsys, onnx_bundle):
    import edgeslm

    for value in ("cpu", "CPUExecutionProvider", ["CPUExecutionProvider", "cpu"]):
        with edgeslm.load(onnx_bundle, engine_options={"providers": value, "threads": "1"}) as m:
            assert m.engine.session.get_providers() == ["CPUExecutionProvider"]
            assert m.engine.session.get_session_options().intra_op_num_threads == 1
    res = run_json(["run", str(onnx_bundle), "-p", "hi", "-n", "2", "--providers", "cpu",
                    "--engine-option", "io_binding=false"], capsys)
    assert res["metrics"]["output_tokens"] >= 1


@requires_export
def test_run_without_chat_template_refuses_system(capsys, tmp_path, onnx_bundle):
    import shutil

    from edgeslm.bundle import hash_files

    b = tmp_path / "b"
    shutil.copytree(onnx_bundle, b)
    cfg = json.loads((b / "edgeslm_tokenizer.json").read_text())
    cfg["chat_template"] = None
    (b / "edgeslm_tokenizer.json").write_text(json.dumps(cfg))
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["files"] = hash_files(b)
    (b / "manifest.json").write_text(json.dumps(manifest))
    res = run_json(["run", str(b), "-p", "hi", "-n", "2"], capsys)
    assert res["chat"] is False
    code, _, err = run(["run", str(b), "-p", "hi", "--system", "x"], capsys)
    assert code == 1 and "chat template" in err
    code, _, err = run(["run", str(b), "-p", "hi", "--chat"], capsys)
    assert code == 1 and "no chat template" in err


@requires_export
def test_bench_prefills_the_whole_prompt_every_run(onnx_bundle):
    """Cache reuse must not turn bench's repeated prompt into a 1-token prefill."""
    import edgeslm
    from edgeslm.bench import BenchConfig, bench_model

    with edgeslm.load(onnx_bundle) as m:
        seen = []
        m.generator.listeners.append(seen.append)
        bench_model(m, BenchConfig(prompt_tokens=32, new_tokens=4, runs=2, warmup=1))
    assert len(seen) == 3 and all(r.metrics.cached_tokens == 0 and r.metrics.prompt_tokens == 32 for r in seen)


@pytest.mark.parametrize("verb", ["run", "chat", "serve"])
def test_help_teaches_with_examples(verb, capsys):
    code, out, _ = run([verb, "--help"], capsys)
    assert code == 0 and "Examples:" in out and f"edgeslm {verb} out/smollm2-onnx" in out
