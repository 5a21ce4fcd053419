"""The micro path: train a tiny char model, full-int8 .tflite, TFLite Micro check, C header + host C tests.

No TensorFlow: litert-torch converts, ai-edge-quantizer quantizes (static int8 with a
representative dataset), the PyPI tflite-micro interpreter runs it. gcc compiles the header and
the firmware's chip-independent C code (firmware_examples/esp32-s3-tflm).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

FIRMWARE = Path(__file__).resolve().parents[3] / "firmware_examples" / "esp32-s3-tflm"
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("make") is None, reason="needs gcc and make")


def _needs_micro_deps():
    for m in ("torch", "litert_torch", "ai_edge_quantizer", "tflite_micro"):
        if importlib.util.find_spec(m) is None:
            pytest.skip(f"needs {m}: pip install 'edgeslm-litert[export]' (see docs/backends/litert.md)")


@pytest.fixture(scope="module")
def micro_dir(tmp_path_factory):
    _needs_micro_deps()
    from edgeslm.cli import main
    from edgeslm.testing import CORPUS

    text = tmp_path_factory.mktemp("micro-text") / "corpus.txt"
    text.write_text(("\n".join(CORPUS) + "\n") * 40)
    out = tmp_path_factory.mktemp("micro") / "out"
    assert main(["micro", "--text", str(text), "-o", str(out), "--steps", "400", "--context", "16",
                 "--hidden", "128"]) == 0
    return out


def test_full_int8_model_report(micro_dir):
    r = json.loads((micro_dir / "micro_report.json").read_text())
    assert r["schema_version"] == 1
    assert 20_000 < r["model"]["parameters"] < 1_000_000
    i8 = r["int8"]
    assert i8["bytes"] < 1 << 20 and i8["input"]["dtype"] == i8["output"]["dtype"] == "int8"
    assert set(i8["ops"]) <= {"FULLY_CONNECTED", "RESHAPE"}
    t = r["tflm"]
    assert t["top1_agreement_with_float"] >= 0.95 and 1000 < t["arena_bytes"] < 64 * 1024
    # min/max calibration: held-out logits rarely clip at 127 (a moving average clipped a third)
    assert t["saturated_outputs"] < 0.05
    assert len(t["greedy_sample"]["text"]) == 80 and set(t["greedy_sample"]["text"]) <= set(r["model"]["chars"])


def test_int8_tflite_is_really_int8(micro_dir):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(str(micro_dir / "micro_lm.tflite"))
    it.allocate_tensors()
    assert it.get_input_details()[0]["dtype"] == np.int8 and it.get_output_details()[0]["dtype"] == np.int8
    weights = [t for t in it.get_tensor_details() if len(t["shape"]) == 2 and t["shape"][0] > 16]
    assert weights and all(t["dtype"] == np.int8 for t in weights)
    # per-channel: one scale per output row
    assert any(len(t["quantization_parameters"]["scales"]) == t["shape"][0] for t in weights)


@needs_gcc
def test_header_compiles_and_holds_the_model(micro_dir, tmp_path):
    header = micro_dir / "micro_lm.h"
    text = header.read_text()
    assert "__attribute__((aligned(16)))" in text and "EDGESLM_MICRO_ARENA_BYTES" in text
    subprocess.run(["make", "-s", "-C", str(FIRMWARE / "host_test"), "header", f"HEADER={header}",
                    f"OUT={tmp_path}"], check=True)
    assert (tmp_path / "header_check.o").stat().st_size > (micro_dir / "micro_lm.tflite").stat().st_size


def test_teacher_text_is_generated_and_kept(onnx_bundle, tmp_path):
    """--teacher samples text from a bundle (here the tiny ONNX one) and trains on it."""
    _needs_micro_deps()
    from edgeslm.cli import main

    out = tmp_path / "out"
    assert main(["micro", "--teacher", str(onnx_bundle), "--teacher-chars", "3000", "-o", str(out),
                 "--steps", "200", "--context", "8", "--hidden", "64", "--min-agreement", "0"]) == 0
    generated = (out / "teacher_text.txt").read_text()
    assert len(generated) >= 3000 and generated.startswith("Once upon a time")
    r = json.loads((out / "micro_report.json").read_text())
    assert r["training"]["characters"] == len(generated)  # the teacher's text was the training text


@needs_gcc
@pytest.mark.skipif(not os.environ.get("EDGESLM_TFLM_DIR"),
                    reason="set EDGESLM_TFLM_DIR to a checkout of espressif/esp-tflite-micro (not on PyPI)")
def test_firmware_program_on_host_matches_python_tflm(micro_dir, tmp_path):
    """main/main.cc itself, built with g++ against TFLite Micro sources, generates greedily the
    same characters as the report's sample (the Python TFLite Micro interpreter), in the arena."""
    r = json.loads((micro_dir / "micro_report.json").read_text())
    sample = r["tflm"]["greedy_sample"]
    n = len(sample["text"])
    define_prompt = '-DPROMPT="\\"' + sample["prompt"] + '\\""'
    run = subprocess.run(["make", "-s", "-j2", "-C", str(FIRMWARE / "host_test"), "generate",
                          f"TFLM_DIR={os.environ['EDGESLM_TFLM_DIR']}", f"HEADER={micro_dir / 'micro_lm.h'}",
                          f"OUT={tmp_path}", f"GEN_FLAGS=-DTEMPERATURE=0 -DNEW_CHARS={n} {define_prompt}"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    m = re.search(rf"arena used: (\d+) bytes\n(.*)\n{n} chars in", run.stdout, re.S)
    assert m, run.stdout[-2000:]
    assert m.group(2) == sample["prompt"] + sample["text"]
    assert int(m.group(1)) <= r["tflm"]["arena_bytes"] + 4096


@needs_gcc
def test_host_c_tokenizer_and_sampling(tmp_path):
    r = subprocess.run(["make", "-s", "-C", str(FIRMWARE / "host_test"), "test", f"OUT={tmp_path}"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 failed" in r.stdout


@pytest.mark.slow
def test_default_config_meets_the_bar_on_real_text(tmp_path):
    """`edgeslm micro` with its defaults (~483k parameters) on 40 KB of this repo's docs (~2 min)."""
    _needs_micro_deps()
    from edgeslm.cli import main

    root = FIRMWARE.parents[1]
    docs = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    text = tmp_path / "docs.txt"
    text.write_text("".join(p.read_text() for p in docs)[:40_000])
    assert main(["micro", "--text", str(text), "-o", str(tmp_path / "out")]) == 0
    r = json.loads((tmp_path / "out" / "micro_report.json").read_text())
    assert 300_000 < r["model"]["parameters"] < 1_000_000 and r["int8"]["bytes"] < 1 << 20
    assert r["tflm"]["top1_agreement_with_float"] >= 0.95, r["tflm"]
