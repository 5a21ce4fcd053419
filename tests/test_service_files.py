"""firmware_examples/raspberry-pi and jetson: systemd units checked by systemd itself, scripts by shellcheck.

`systemd-analyze verify` parses the units as systemd would load them (unknown keys, bad values,
an ExecStart that is not executable); it exits 0 on mere warnings, so the tests also require
it to print nothing. scripts/setup.sh installs Debian's systemd and shellcheck when missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ["raspberry-pi", "jetson"]
UNITS = ["edgeslm-serve.service", "edgeslm-agent.service"]
EDGESLM = Path(sys.executable).parent / "edgeslm"
SCRIPTS = [REPO / "firmware_examples/raspberry-pi/install.sh", REPO / "firmware_examples/raspberry-pi/uninstall.sh",
           REPO / "scripts/arm64-check.sh", REPO / "scripts/build-wheels.sh"]

needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze not installed (Debian: apt-get install systemd; "
                                          "scripts/setup.sh does it where apt-get is available)")


def staged_units(folder: str, tmp_path: Path) -> list[Path]:
    """The folder's units with the install prefix pointed at this venv's edgeslm, as install.sh rewrites it."""
    out = []
    for name in UNITS:
        text = (REPO / "firmware_examples" / folder / name).read_text()
        dst = tmp_path / name
        dst.write_text(text.replace("/opt/edgeslm/venv/bin/edgeslm", str(EDGESLM)))
        out.append(dst)
    return out


def analyze(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=60)


@needs_systemd
@pytest.mark.parametrize("folder", FOLDERS)
def test_units_verify_cleanly(folder, tmp_path):
    res = analyze("verify", *map(str, staged_units(folder, tmp_path)))
    assert res.returncode == 0 and res.stderr.strip() == "" and res.stdout.strip() == "", res.stderr


@needs_systemd
def test_verify_would_catch_a_broken_unit(tmp_path):
    unit = staged_units("raspberry-pi", tmp_path)[0]
    unit.write_text(unit.read_text().replace("Restart=on-failure", "Restart=sometimes").replace("User=", "Usr="))
    res = analyze("verify", str(unit))
    assert "restart specifier" in res.stderr and "Unknown key 'Usr'" in res.stderr


@needs_systemd
@pytest.mark.parametrize("folder,limit", [("raspberry-pi", 2.0), ("jetson", 2.5)])
def test_units_are_hardened(folder, limit, tmp_path):
    for unit in staged_units(folder, tmp_path):
        res = analyze("security", "--offline=yes", "--no-pager", str(unit))
        if "--offline" in res.stderr and "unrecognized" in res.stderr:
            pytest.skip("systemd-analyze security --offline needs systemd >= 252")
        m = re.search(r"Overall exposure level for \S+: ([\d.]+)", res.stdout + res.stderr)
        assert m, res.stdout[-500:] + res.stderr[-500:]
        assert float(m.group(1)) <= limit, f"{unit.name}: exposure {m.group(1)}"
        text = unit.read_text()
        assert "User=edgeslm" in text and "Restart=" in text and "StartLimitBurst=" in text


def exec_start(unit: Path) -> tuple[str, list[str]]:
    line = next(ln for ln in unit.read_text().splitlines() if ln.startswith("ExecStart="))
    words = line.split()[1:]
    return words[0], [w for w in words[1:] if w.startswith("--")]


@pytest.mark.parametrize("folder", FOLDERS)
@pytest.mark.parametrize("unit", UNITS)
def test_exec_start_uses_real_flags_and_defined_settings(folder, unit):
    from click.testing import CliRunner

    from edgeslm.cli import _register, cli

    path = REPO / "firmware_examples" / folder / unit
    text = path.read_text()
    verb, flags = exec_start(path)
    _register()
    if verb not in cli.commands:
        pytest.skip(f"'edgeslm {verb}' is not in this checkout (issue 17 adds it)")
    helptext = CliRunner().invoke(cli, [verb, "--help"]).output
    for flag in flags:
        assert re.search(rf"{re.escape(flag)}\b", helptext), f"{unit}: edgeslm {verb} has no {flag}"
    # every ${VAR} the command uses has a default in the unit and is documented in edgeslm.env
    env_file = (REPO / "firmware_examples" / folder / "edgeslm.env").read_text()
    for var in set(re.findall(r"\$\{?(EDGESLM_\w+)", text.split("ExecStart=")[1].splitlines()[0])):
        assert re.search(rf"\b{var}=", text.split("ExecStart=")[0]), f"{unit}: no default for {var}"
        assert var in env_file, f"{folder}/edgeslm.env does not mention {var}"


def test_agent_credentials_come_from_a_root_only_file():
    for folder in FOLDERS:
        unit = (REPO / "firmware_examples" / folder / "edgeslm-agent.service").read_text()
        assert "EnvironmentFile=/etc/edgeslm/broker.env" in unit
        assert "PASSWORD" not in unit.split("ExecStart=")[1].splitlines()[0]
    install = SCRIPTS[0].read_text()
    assert "install -m 0600 -o root -g root" in install and "broker.env" in install


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_pass_shellcheck(script):
    if shutil.which("shellcheck"):
        res = subprocess.run(["shellcheck", "-x", str(script)], capture_output=True, text=True, timeout=60)
    else:
        res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_install_script_refuses_bad_arguments(tmp_path):
    script = str(SCRIPTS[0])
    res = subprocess.run(["bash", script, "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "--wheels DIR" in res.stdout
    res = subprocess.run(["bash", script, "--bundle", str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 1 and "--wheels and --bundle are required" in res.stderr
    res = subprocess.run(["bash", script, "--frobnicate"], capture_output=True, text=True)
    assert res.returncode == 1 and "unknown argument '--frobnicate'" in res.stderr
    jetson = REPO / "firmware_examples/jetson/install.sh"
    assert jetson.is_symlink() and jetson.resolve() == SCRIPTS[0].resolve()
