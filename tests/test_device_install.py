"""The README's "On a device" commands, run as written in a fresh virtual environment.

Builds the wheels (scripts/build-wheels.sh), makes a new venv with no torch, and runs the
device block of the README line by line in a folder laid out as the README says (``dist/`` and
``out/smollm2-int4/`` copied over from the workstation). The bundle is a tiny random Llama
transcoded from a Q4_1 GGUF like SmolLM2's (int4-gguf), so the real model is not needed.
pip reuses its cache (PIP_CACHE_DIR) and takes onnxruntime, numpy and tokenizers from the
registry; the first run downloads ~60 MB, later runs take ~20 s.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeslm.testing import requires_export

REPO = Path(__file__).resolve().parents[1]


def readme_blocks() -> tuple[str, str]:
    """(workstation block, device block) of the README's "On a device" section."""
    text = (REPO / "README.md").read_text()
    section = re.search(r"^## On a device\n(.*?)(?=^## )", text, re.S | re.M)
    assert section, "README has no '## On a device' section"
    blocks = re.findall(r"```bash\n(.*?)```", section.group(1), re.S)
    assert len(blocks) >= 2, "the section needs a workstation block and a device block"
    return blocks[0], blocks[1]


def test_readme_device_commands_are_what_the_test_runs():
    work, device = readme_blocks()
    assert "bash scripts/build-wheels.sh" in work and "-p int4-gguf -o out/smollm2-int4" in work
    assert "pip install --find-links dist 'edgeslm[onnx]'" in device
    for verb in ("verify out/smollm2-int4 --on-device", "run out/smollm2-int4", "bench out/smollm2-int4"):
        assert verb in device


def device_env(home: Path) -> dict[str, str]:
    """A clean environment: no dev venv on PATH, HOME elsewhere, but the user's pip cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)
    env["PIP_CACHE_DIR"] = os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip")
    env["HOME"] = str(home)
    return env


@pytest.mark.slow
@requires_export
def test_readme_device_install_runs_as_written(tiny_gguf_q4, tmp_path):
    from edgeslm.exporting import export_model
    from edgeslm.sources import load_source

    times = {}
    t0 = time.perf_counter()
    subprocess.run(["bash", str(REPO / "scripts/build-wheels.sh"), str(tmp_path / "dist")], check=True,
                   env={**os.environ, "PYTHON": sys.executable}, capture_output=True)
    wheels = sorted(p.name for p in (tmp_path / "dist").glob("*.whl"))
    assert [w.split("-")[0] for w in wheels] == ["edgeslm", "edgeslm_coreml", "edgeslm_litert", "edgeslm_onnx",
                                                 "edgeslm_openvino"]
    assert all(w.endswith("-py3-none-any.whl") for w in wheels)
    times["build wheels"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    # the workstation's export, as the README writes it but on a tiny GGUF (accuracy_level 0:
    # random tiny weights make int8-activation logits near-ties; SmolLM2 uses the default)
    export_model(load_source(tiny_gguf_q4), tmp_path / "out" / "smollm2-int4", format="onnx", precision="int4-gguf",
                 context_length=256, parity_tokens=8, options={"accuracy_level": 0})
    times["tiny export (host)"] = time.perf_counter() - t0

    home = tmp_path / "home"
    home.mkdir()
    env = device_env(home)
    _, device = readme_blocks()
    lines = [ln.split("#")[0].strip() for ln in device.splitlines()]
    for line in filter(None, lines):
        t0 = time.perf_counter()
        res = subprocess.run(["bash", "-euo", "pipefail", "-c", line], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=900)
        times[line[:60]] = time.perf_counter() - t0
        assert res.returncode == 0, f"{line}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
        if "--on-device" in line:
            assert "on-device parity passed" in res.stdout
        if " run " in line:  # tokens streamed, or at least the metrics line (a tiny random model may stop at once)
            assert res.stdout.strip() or "output tokens" in res.stderr, res.stderr
    venv_python = home / "edgeslm-venv" / "bin" / "python"
    assert venv_python.exists(), "the README's venv is not where the test expects it"
    probe = subprocess.run([str(venv_python), "-c", "import torch"], capture_output=True, text=True, env=env)
    assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr
    listed = subprocess.run([str(venv_python), "-m", "pip", "list", "--format=freeze"], capture_output=True,
                            text=True, env=env).stdout.lower()
    for absent in ("torch==", "transformers==", "openvino==", "ai-edge-litert=="):
        assert absent not in listed
    assert "onnxruntime==" in listed and "edgeslm-onnx==0.1.0" in listed
    print("\n" + "\n".join(f"{v:7.1f} s  {k}" for k, v in times.items()))
