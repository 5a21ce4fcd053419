"""The command line's output contract, for every verb: -q/-v, --json (errors included), exit
codes, progress on stderr, and no library noise unless -v."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import warnings

import click
import pytest

from edgeslm.cli import _register, cli, main
from edgeslm.testing import requires_export, requires_onnx, requires_smollm2

#: verbs without --json, and why: they run until stopped or talk with a person
NO_JSON = {
    "agent": "a daemon: publishes telemetry until stopped",
    "chat": "interactive",
    "serve": "a server: runs until stopped",
    "fleet collect": "a daemon: stores telemetry until stopped",
    "fleet serve-artifacts": "a server: runs until stopped",
}

#: lines the libraries print when left alone (torchao, torch, transformers/tqdm, TensorFlow, absl)
NOISE = ("Failed to load", "_pytree.py", "Enum subclass", "it/s]", "de-quantizing", "Warning:", "warnings.warn",
         "oneDNN", "absl::", "I0000", "W0000")

def run(argv, capsys):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def leaf_commands():
    _register()

    def walk(cmd, path):
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from walk(sub, [*path, name])
        else:
            yield " ".join(path), cmd

    return list(walk(cli, []))


def test_every_verb_takes_quiet_verbose_and_json():
    verbs = leaf_commands()
    assert len(verbs) > 20
    for name, cmd in verbs:
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        assert {"-q", "--quiet", "-v", "--verbose"} <= opts, name
        assert ("--json" in opts) != (name in NO_JSON), f"{name}: --json {'missing' if name not in NO_JSON else 'unexpected'}"


def test_a_plugin_verb_made_as_a_plain_click_command_joins_the_contract(capsys):
    """A backend may add a verb (issue #20's plugin door); built with plain click, it still takes
    -q/-v and --json errors like ours."""
    from edgeslm.errors import ExportError

    @click.command("plugin-test-verb")
    @click.option("--json", "as_json", is_flag=True)
    @click.option("--fail", is_flag=True)
    def verb(as_json, fail):
        from edgeslm.cli._common import emit_json
        from edgeslm.cli._output import current

        current().note("a note")
        if fail:
            raise ExportError("it failed")
        emit_json({"ok": True}) if as_json else click.echo("ok")

    _register()
    cli.add_command(verb)
    try:
        assert run(["plugin-test-verb"], capsys) == (0, "ok\n", "a note\n")
        assert run(["plugin-test-verb", "-q"], capsys) == (0, "ok\n", "")
        code, out, _ = run(["-q", "plugin-test-verb", "--fail", "--json"], capsys)
        assert code == 1 and json.loads(out)["error"] == "it failed"
    finally:
        del cli.commands["plugin-test-verb"]


@pytest.mark.parametrize("argv", [["models", "--json"], ["--quiet", "models", "--json"], ["models", "-q", "--json"],
                                  ["targets", "list", "--json"], ["targets", "show", "raspberry-pi-5", "-v", "--json"]])
def test_json_results_are_one_document(capsys, argv):
    code, out, err = run(argv, capsys)
    assert code == 0, err
    json.loads(out)


@pytest.mark.parametrize("argv, code, fragment", [
    (["info", "/nonexistent/bundle", "--json"], 1, "not a bundle directory"),
    (["verify", "/nonexistent/bundle", "-q", "--json"], 1, "not a bundle directory"),
    (["fit", "smollm2-135m", "--target", "no-such-device", "--json"], 1, "no-such-device"),
    (["run", "/nonexistent/bundle", "-p", "hi", "-t", "nan", "--json"], 2, "temperature must be a finite number"),
    (["bench", "/nonexistent/bundle", "--runs", "0", "--json"], 2, "is not in the range"),
    (["models", "--bogus", "--json"], 2, "No such option"),
    (["fleet", "events", "--limit", "0", "--json"], 2, "is not in the range"),
])
def test_errors_under_json_are_json_on_stdout(capsys, argv, code, fragment):
    got, out, err = run(argv, capsys)
    assert got == code, err
    doc = json.loads(out)
    assert fragment in doc["error"] and doc["exit_code"] == code, doc
    assert doc["type"] == ("UsageError" if code == 2 else doc["type"]) and doc["type"]
    assert fragment in err and "Traceback" not in err  # the person at the terminal reads it too


@requires_smollm2
def test_a_result_then_a_failure_stays_one_document(capsys):
    """fit --json prints the forecast and exits 1 when nothing fits: one JSON document, not two."""
    code, out, err = run(["fit", "smollm2-135m", "--target", "esp32-s3", "--json"], capsys)
    assert code == 1 and json.loads(out)["fits"] is False
    assert err.startswith("error: ")


@pytest.mark.parametrize("argv, fragment", [
    (["-t", "nan"], "temperature must be a finite number"),
    (["-t", "0.8", "--seed", "-1"], "seed must be an integer >= 0"),
    (["-t", "0.8", "--top-k", "-3"], "top_k must be >= 0"),
    (["-t", "0.8", "--top-p", "1.5"], "top_p must be in (0, 1]"),
    (["-n", "0"], "max_new_tokens must be at least 1"),
    (["--seed", "3"], "--seed only applies when sampling"),
])
def test_bad_sampling_values_are_usage_errors(capsys, tmp_path, argv, fragment):
    """Exit 2 like any bad flag, and before the bundle is opened (it does not even exist here)."""
    for verb in (["run", "-p", "hi"], ["chat"]):
        code, _, err = run([verb[0], tmp_path / "no-bundle", *verb[1:], *argv], capsys)
        assert code == 2 and fragment in err and "Traceback" not in err, err


def test_quiet_and_verbose_exclude_each_other(capsys):
    code, _, err = run(["models", "-q", "-v"], capsys)
    assert code == 2 and "exclude each other" in err


def test_the_cli_leaves_no_global_state_behind(capsys):
    """main() restores the warning filters, logger levels and environment it changed."""
    filters, level = warnings.filters[:], logging.getLogger("torchao").level
    env = {k: os.environ.get(k) for k in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "TF_CPP_MIN_LOG_LEVEL")}
    assert run(["models", "--json"], capsys)[0] == 0
    assert warnings.filters == filters and logging.getLogger("torchao").level == level
    assert {k: os.environ.get(k) for k in env} == env


@requires_onnx
@requires_export
def test_bundle_verbs_progress_quiet_and_json(capsys, onnx_bundle, tmp_path):
    # default: the result on stdout, the metrics line on stderr
    code, out, err = run(["run", onnx_bundle, "-p", "hi", "-n", "2"], capsys)
    assert code == 0 and "tok/s decode" in err.splitlines()[-1]
    # -q: nothing but the result
    code, out, err = run(["run", onnx_bundle, "-p", "hi", "-n", "2", "-q"], capsys)
    assert code == 0 and err == ""
    code, out, err = run(["verify", onnx_bundle], capsys)
    assert code == 0 and out.startswith("ok:")
    code, out, err = run(["verify", onnx_bundle, "--on-device", "--json", "-q"], capsys)
    assert code == 0 and json.loads(out)["on_device"]["passed"] and err == ""
    code, out, err = run(["bench", onnx_bundle, "--runs", "1", "--warmup", "0", "--prompt-tokens", "4",
                          "--new-tokens", "2", "--json"], capsys)
    assert code == 0 and json.loads(out)["format"] == "onnx"
    code, out, err = run(["bench", onnx_bundle, "--runs", "1", "--warmup", "0", "--prompt-tokens", "4",
                          "--new-tokens", "2", "-q"], capsys)
    assert code == 0 and "decode tok/s" in out and err == ""


def test_keys_verbs_print_json(capsys, tmp_path):
    pytest.importorskip("cryptography", reason="needs the sign extra: pip install 'edgeslm[sign]'")
    code, out, _ = run(["keys", "generate", tmp_path / "k", "--json"], capsys)
    kid = json.loads(out)["key_id"]
    code, out, _ = run(["keys", "id", tmp_path / "k.pub", "--json"], capsys)
    assert code == 0 and json.loads(out) == {"key": str(tmp_path / "k.pub"), "key_id": kid}


@requires_export
def test_openvino_export_json_is_clean(capsys, tmp_path, tiny_hf):
    """NNCF draws its progress bar on stdout: it must land neither in the JSON document nor, without
    -v, anywhere."""
    pytest.importorskip("edgeslm_openvino", reason="needs the openvino backend: pip install -e backends/openvino")
    pytest.importorskip("nncf", reason="needs the openvino backend's export extra (nncf)")
    code, out, err = run(["export", tiny_hf, "-f", "openvino", "-p", "int8", "-o", tmp_path / "ov", "--json",
                          "--no-parity", "--context-length", "32"], capsys)
    assert code == 0, err
    assert json.loads(out)["format"] == "openvino"
    assert "Applying Weight Compression" not in err
    code, out, err = run(["export", tiny_hf, "-f", "openvino", "-p", "int8", "-o", tmp_path / "ov2", "--no-parity",
                          "--context-length", "32", "-q"], capsys)
    assert code == 0 and "Applying Weight Compression" not in out + err and out.startswith("bundle")


def _export_subprocess(tmp_path, gguf, *flags):
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE", "TF_CPP_MIN_LOG_LEVEL")}
    env["EDGESLM_PROGRESS_MIN_S"] = "0"  # every step's line, however fast (the graph-writer export takes < 1 s)
    out = tmp_path / f"bundle{len(flags)}"
    return subprocess.run([sys.executable, "-m", "edgeslm", "export", str(gguf), "-o", str(out), "--no-parity",
                           "--context-length", "32", "--json", *flags], check=False, capture_output=True, text=True,
                          env=env, timeout=600)


@requires_onnx
@requires_export
def test_export_in_a_fresh_process_shows_no_library_noise(tmp_path, tiny_gguf_q4):
    """A real process (libraries imported for the first time): stdout is the manifest, stderr only
    our steps. The noise this guards against is listed in edgeslm/cli/_noise.py."""
    p = _export_subprocess(tmp_path, tiny_gguf_q4)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["format"] == "onnx"
    assert "✓ Loading" in p.stderr and "✓ Exporting" in p.stderr
    assert not [n for n in NOISE if n in p.stderr], p.stderr
    assert all(line.startswith("✓ ") for line in p.stderr.splitlines()), p.stderr


@pytest.mark.slow
@requires_onnx
@requires_export
def test_verbose_lets_the_libraries_speak(tmp_path, tiny_gguf_q4):
    p = _export_subprocess(tmp_path, tiny_gguf_q4, "-v")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["format"] == "onnx"
    if importlib.util.find_spec("torchao") is not None:  # its import logs "Failed to load ... .so" here
        assert "torchao" in p.stderr


def test_shell_completion_as_documented():
    """README: eval "$(_EDGESLM_COMPLETE=bash_source edgeslm)"; completing verbs and options."""
    env = dict(os.environ, _EDGESLM_COMPLETE="bash_source")
    src = subprocess.run([sys.executable, "-m", "edgeslm"], check=False, capture_output=True, text=True, env=env)
    assert src.returncode == 0 and "_edgeslm_completion" in src.stdout
    for words, cword, want in (("edgeslm ex", "1", "plain,export"), ("edgeslm run b --js", "3", "plain,--json"),
                               ("edgeslm fleet st", "2", "plain,status")):
        env = dict(os.environ, _EDGESLM_COMPLETE="bash_complete", COMP_WORDS=words, COMP_CWORD=cword)
        p = subprocess.run([sys.executable, "-m", "edgeslm"], check=False, capture_output=True, text=True, env=env)
        assert want in p.stdout.splitlines(), (words, p.stdout, p.stderr)


def test_native_stderr_drops_only_the_known_lines(capfd):
    from edgeslm.quiet import native_stderr, set_verbose

    with native_stderr(drop=("INFO: Created",)):
        os.write(2, b"INFO: Created some delegate\nE: a real error\n")
    assert capfd.readouterr().err == "E: a real error\n"
    previous = set_verbose(True)  # what -v does
    try:
        with native_stderr(drop=("INFO: Created",)):
            os.write(2, b"INFO: Created some delegate\n")
        assert capfd.readouterr().err == "INFO: Created some delegate\n"
    finally:
        set_verbose(previous)


def test_native_teardown_quiet_drops_only_what_comes_after_python():
    """What a library writes to fd 2 after the last atexit handlers (LiteRT's C++ teardown) is
    dropped; what came before stays, and -v keeps everything."""
    code = ("import atexit, os, sys\n"
            "atexit.register(lambda: os.write(2, b'late\\n'))  # runs after the handler below (LIFO)\n"
            "from edgeslm.quiet import native_teardown_quiet, set_verbose\n"
            "set_verbose(len(sys.argv) > 1)\n"
            "native_teardown_quiet(); native_teardown_quiet()\n"
            "sys.stderr.write('early\\n')\n")
    for args, want in (([], "early\n"), (["-v"], "early\nlate\n")):
        p = subprocess.run([sys.executable, "-c", code, *args], check=False, capture_output=True, text=True)
        assert p.returncode == 0 and p.stderr == want, p.stderr


@requires_export
def test_litert_delegate_line_only_with_verbose(bundle_factory):
    """LiteRT logs 'INFO: Created TensorFlow Lite XNNPACK delegate' from C++ once per process."""
    from edgeslm.plugins import EXPORTERS, available

    pytest.importorskip("ai_edge_litert", reason="needs the litert backend: pip install -e backends/litert")
    if "litert" not in available(EXPORTERS):
        pytest.skip("needs the litert exporter: pip install -e 'backends/litert[export]'")
    bundle = bundle_factory("litert")  # the conformance suite's bundle (cached per session)
    for flags, shown in (([], False), (["-v"], True)):
        p = subprocess.run([sys.executable, "-m", "edgeslm", "run", str(bundle), "--raw", "-p", "hi", "-n", "2",
                            *flags], check=False, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        assert ("Created TensorFlow Lite XNNPACK delegate" in p.stderr) == shown, p.stderr
