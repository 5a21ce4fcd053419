"""Target profiles: every shipped TOML validates, named errors, the search path, "did you mean", CLI."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edgeslm.cli import main
from edgeslm.errors import TargetError
from edgeslm.targets import (
    ENV_VAR,
    MissingFieldError,
    TargetFileError,
    UnitError,
    UnknownFormatError,
    UnknownPrecisionError,
    UnknownTargetError,
    builtin_dir,
    list_targets,
    load_target,
    load_target_file,
)
from edgeslm.targets.units import parse_bytes

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "targets").glob("*.toml"))
REQUIRED = ["raspberry-pi-4", "raspberry-pi-5", "jetson-orin-nano", "android-arm64", "android-arm64-midrange",
            "iphone-15", "mac-apple-silicon", "intel-core-cpu", "intel-npu", "x86-64-generic", "esp32-s3", "stm32h7"]


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No user targets from the machine running the tests: empty env path and config folder."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path


def test_the_required_devices_ship():
    assert sorted(p.stem for p in SHIPPED) == sorted(REQUIRED)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_target_validates(path):
    t = load_target_file(path)
    assert t.name == path.stem and t.title and t.source and t.cpu.cores >= 1
    assert 0 < t.memory.budget <= t.memory.ram and t.memory.storage > 0
    assert t.formats and all(f.precisions for f in t.formats)
    assert t.runtime.default_context >= 32 and t.runtime.overhead > 0
    if t.kind == "mcu":
        assert t.memory.weights_in == "flash" and t.memory.sram and t.runtime.full_int8_only
        assert [f.name for f in t.formats] == ["tflite-micro"]


def test_the_packaged_folder_is_the_top_level_targets(isolated):
    # The wheel ships edgeslm/targets/profiles/*.toml (package-data through the symlink); in a
    # checkout the same folder must show exactly the top-level files.
    assert sorted(p.name for p in builtin_dir().glob("*.toml")) == [p.name for p in SHIPPED]
    assert sorted(t.name for t in list_targets()) == sorted(REQUIRED)


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / f"{name}.toml"
    p.write_text(text)
    return p


def _variant(base: str, old: str, new: str) -> str:
    text = (REPO / "targets" / f"{base}.toml").read_text()
    assert old in text, old
    return text.replace(old, new)


def test_user_target_on_env_path_is_found_and_can_override(isolated, monkeypatch):
    d1, d2 = isolated / "a", isolated / "b"
    _write(d1, "my-board", _variant("raspberry-pi-5", 'title = "Raspberry Pi 5 (8 GB)"', 'title = "My board"'))
    _write(d2, "raspberry-pi-5", _variant("raspberry-pi-5", 'ram = "8 GiB"', 'ram = "16 GiB"'))
    monkeypatch.setenv(ENV_VAR, os.pathsep.join([str(d1), str(d2)]))
    mine = load_target("my-board")
    assert mine.title == "My board" and mine.path == d1 / "my-board.toml"
    assert load_target("raspberry-pi-5").memory.ram == 16 * 2**30  # earlier on the path wins
    assert "my-board" in [t.name for t in list_targets()]


def test_user_config_folder_is_searched(isolated):
    _write(isolated / "config" / "edgeslm" / "targets", "lab-pi",
           _variant("raspberry-pi-4", 'title = "Raspberry Pi 4 Model B (4 GB)"', 'title = "Lab Pi"'))
    assert load_target("lab-pi").title == "Lab Pi"


def test_a_path_to_a_toml_file_works(isolated):
    p = _write(isolated / "x", "board", (REPO / "targets" / "esp32-s3.toml").read_text())
    assert load_target(str(p)).name == "board"


def test_unknown_target_suggests(isolated):
    with pytest.raises(UnknownTargetError, match="Did you mean: raspberry-pi-5"):
        load_target("raspbery-pi-5")
    with pytest.raises(UnknownTargetError, match="esp32-s3"):
        load_target("esp32")


@pytest.mark.parametrize("old,new,error,match", [
    ('kind = "sbc"\n', "", MissingFieldError, "missing field 'kind'"),
    ('budget = "6 GiB"', "", MissingFieldError, "missing field 'memory.budget'"),
    ("cores = 4\n", "", MissingFieldError, "missing field 'cpu.cores'"),
    ('name = "onnx"', 'name = "TensorRT LLM"', UnknownFormatError, "'TensorRT LLM' in formats.0. is not a format name"),
    ('precisions = ["int8", "int4", "fp32"]   # onnx', 'precisions = ["int3"]   # onnx', UnknownPrecisionError,
     "unknown precision 'int3'"),
    ('ram = "8 GiB"', "ram = 8", UnitError, "'memory.ram' = 8 has no unit"),
    ('ram = "8 GiB"', 'ram = "8 GiBs"', UnitError, "unknown unit 'GiBs'"),
    ('overhead = "128 MiB"', 'overhead = "lots"', UnitError, "runtime.overhead"),
    ('budget = "6 GiB"', 'budget = "9 GiB"', TargetFileError, "exceeds the RAM"),
    ("cores = 4", 'cores = "four"', TargetFileError, "'cpu.cores' must be int"),
    ("schema_version = 1", "schema_version = 7", TargetFileError, "newer than this edgeslm"),
])
def test_invalid_targets_raise_named_errors(isolated, old, new, error, match):
    p = _write(isolated / "bad", "bad-board", _variant("raspberry-pi-5", old, new))
    with pytest.raises(error, match=match) as exc:
        load_target_file(p)
    assert str(p) in str(exc.value)  # the message names the file
    assert isinstance(exc.value, TargetError)


def test_a_format_whose_plugin_is_absent_is_device_data(isolated):
    """A target may list a runtime this machine has no plugin for: fit sizes it, export names the gap."""
    from edgeslm.errors import BackendNotInstalledError
    from edgeslm.spec import ModelSpec
    from edgeslm.targets import forecast
    from edgeslm.targets.plan import plan_export

    p = _write(isolated / "t", "rtx-box", _variant("raspberry-pi-5", 'name = "onnx"', 'name = "tensorrt-llm"'))
    t = load_target_file(p)
    assert t.formats[0].name == "tensorrt-llm"
    spec = ModelSpec(architecture="llama", vocab_size=256, hidden_size=64, num_layers=2, num_heads=4,
                     num_kv_heads=2, head_dim=16, intermediate_size=128, context_length=512)
    assert forecast(spec, t, "tensorrt-llm", "int8", 256).fits
    with pytest.raises(BackendNotInstalledError, match="no tensorrt-llm exporter is installed"):
        plan_export(spec, t)


def test_a_target_file_sizes_its_own_precisions(isolated):
    """[precisions.NAME] in a target file sizes a precision no installed plugin declares."""
    text = _variant("raspberry-pi-5", 'precisions = ["int8", "int4", "fp32"]   # onnx',
                    'precisions = ["int3-lut"]   # onnx')
    with pytest.raises(UnknownPrecisionError, match=r"\[precisions.int3-lut\]"):
        load_target_file(_write(isolated / "a", "b3", text))
    text += '\n[precisions.int3-lut]\nbits = 3\ngroup = 64\nscale_bytes = 2.0\nact_bytes = 2\n'
    t = load_target_file(_write(isolated / "b", "b3", text))
    assert t.precisions["int3-lut"].bits == 3 and t.precisions["int3-lut"].group == 64


def test_shipped_precision_facts_agree_with_installed_plugins():
    """The targets' stand-in [precisions.*] tables equal the figures of the plugin that writes them."""
    from edgeslm.plugins import formats
    from edgeslm.targets.profile import _read_precisions, _Reader, tomllib

    declared = {p: c for info in formats().values() for p, c in info.precisions.items()}
    checked = 0
    for f in sorted((REPO / "targets").glob("*.toml")):
        for name, c in _read_precisions(_Reader(str(f), tomllib.loads(f.read_text()))).items():
            if name in declared:
                assert c.bits == declared[name].bits and c.group == declared[name].group, (f, name)
                assert (c.scale_bytes, c.act_bytes) == (declared[name].scale_bytes, declared[name].act_bytes), (f, name)
                checked += 1
    if not checked:
        pytest.skip("no plugin declaring these precisions is installed (the LiteRT backend declares them)")


def test_invalid_toml_names_the_file(isolated):
    p = _write(isolated / "bad", "broken", "title = \n")
    with pytest.raises(TargetFileError, match="not valid TOML"):
        load_target_file(p)


def test_mcu_needs_flash_and_int8_only(isolated):
    p = _write(isolated / "bad", "mcu", _variant("esp32-s3", 'flash = "16 MiB"', ""))
    with pytest.raises(MissingFieldError, match="memory.flash"):
        load_target_file(p)
    p = _write(isolated / "bad", "mcu2", _variant("esp32-s3", 'precisions = ["full-int8"]',
                                                   'precisions = ["full-int8", "fp32"]'))
    with pytest.raises(TargetFileError, match="full_int8_only"):
        load_target_file(p)


def test_units():
    assert parse_bytes("8 GiB") == 8 * 2**30 and parse_bytes("512KiB") == 512 * 1024
    assert parse_bytes("64 GB") == 64 * 10**9 and parse_bytes("1.5 MiB") == 1572864


def test_cli_list_and_show(isolated, capsys):
    code, out, _ = run(["targets", "list", "--json"], capsys)
    assert code == 0
    names = [t["name"] for t in json.loads(out)]
    assert sorted(names) == sorted(REQUIRED)
    code, out, _ = run(["targets", "list"], capsys)
    assert code == 0 and "raspberry-pi-5" in out and "tflite-micro" in out
    code, out, _ = run(["targets", "show", "esp32-s3"], capsys)
    assert code == 0 and "Espressif ESP32-S3 Series Datasheet" in out and "full-int8" in out
    code, out, _ = run(["targets", "show", "raspberry-pi-5", "--json"], capsys)
    d = json.loads(out)
    assert d["memory"]["ram"] == 8 * 2**30 and d["formats"][0]["name"] == "onnx"
    code, out, err = run(["targets", "show", "jetson-nano"], capsys)
    assert code == 1 and "Did you mean: jetson-orin-nano" in err and err.count("\n") == 1


@pytest.mark.parametrize("verb", [["targets"], ["targets", "list"], ["targets", "show"], ["fit"], ["keys"],
                                  ["keys", "generate"], ["export"]])
def test_help_has_examples(verb, capsys):
    code, out, _ = run([*verb, "--help"], capsys)
    assert code == 0 and "Usage: edgeslm" in out


@pytest.mark.slow
def test_the_wheel_contains_the_targets(tmp_path):
    """Build the core wheel from a copy of the sources (no deps, no isolation: offline) and look inside."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(REPO / "targets", src / "targets")
    shutil.copytree(REPO / "edgeslm", src / "edgeslm", symlinks=True, ignore=ignore)  # keep profiles a link
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "-w", str(tmp_path / "w"), "--no-deps",
                    "--no-build-isolation", "-q"], check=True, cwd=tmp_path)
    wheel = next((tmp_path / "w").glob("edgeslm-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    packaged = sorted(Path(n).name for n in names if n.startswith("edgeslm/targets/profiles/"))
    assert packaged == [p.name for p in SHIPPED]
