"""A third-party backend, defined only here, goes through the same door as the built-in ones.

The fixture writes a tiny package and a ``*.dist-info`` folder (METADATA + entry_points.txt)
into a temporary folder and puts it on ``sys.path``: ``importlib.metadata`` then finds its entry
points exactly as it finds an installed wheel's. Nothing of edgeslm's lookup is patched. The
backend adds a format (``toy``), a precision (``int3-toy``, with its sizing facts) and a verb
(``edgeslm toy-hello``), and names its runtime package (``toy-runtime``).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from edgeslm.cli import main
from edgeslm.spec import ModelSpec
from edgeslm.targets import ENV_VAR, forecast, load_target
from edgeslm.targets.profile import UnknownPrecisionError, load_target_file

PACKAGE = '''
import click

from edgeslm.exporting import Exporter
from edgeslm.plugins import FormatInfo
from edgeslm.targets.precisions import PrecisionCost

TOY = FormatInfo(name="toy", runtime="toy-runtime", default_rank=0,
                 precisions={"int3-toy": PrecisionCost(3, 16, 2.0, 2, "3-bit weights, fp16 scale per 16")},
                 small_model_hint="`edgeslm toy-hello` says hello")


class ToyExporter(Exporter):
    name = "toy"
    precisions = ("int3-toy",)

    def export(self, source, spec, out_dir, steps):
        raise NotImplementedError


@click.command("toy-hello")
@click.option("--name", default="world")
def hello(name):
    """Say hello from a third-party plugin."""
    click.echo(f"hello {name} from the toy backend")
'''

ENTRY_POINTS = '''
[edgeslm.formats]
toy = toy_backend_pkg:TOY

[edgeslm.exporters]
toy = toy_backend_pkg:ToyExporter

[edgeslm.commands]
toy-hello = toy_backend_pkg:hello
'''

TARGET = '''
schema_version = 1
title = "A board that runs the toy format"
kind = "sbc"
source = "this test"

[cpu]
arch = "arm64"
cores = 4

[memory]
ram = "1 GiB"
storage = "8 GB"
budget = "512 MiB"

[[formats]]
name = "toy"
precisions = ["int3-toy"]

[runtime]
default_context = 256
overhead = "16 MiB"
'''

SPEC = ModelSpec(architecture="llama", vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                 head_dim=16, intermediate_size=128, context_length=512, tie_word_embeddings=False, name="tiny")


def _dist(root: Path, name: str, version: str, entry_points: str = "") -> None:
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    if entry_points:
        (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


@pytest.fixture
def toy_backend(tmp_path, monkeypatch):
    root = tmp_path / "site"
    (root / "toy_backend_pkg").mkdir(parents=True)
    (root / "toy_backend_pkg" / "__init__.py").write_text(PACKAGE)
    _dist(root, "toy-backend", "0.1", ENTRY_POINTS)
    _dist(root, "toy-runtime", "1.2.3")
    monkeypatch.syspath_prepend(str(root))  # what installing a wheel into site-packages amounts to
    yield root
    import sys

    sys.modules.pop("toy_backend_pkg", None)


@pytest.fixture
def toy_target(tmp_path, monkeypatch):
    folder = tmp_path / "targets"
    folder.mkdir()
    (folder / "toy-board.toml").write_text(TARGET)
    monkeypatch.setenv(ENV_VAR, str(folder))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return folder / "toy-board.toml"


def test_its_format_and_precision_size_a_target(toy_backend, toy_target):
    from edgeslm.plugins import formats

    assert formats()["toy"].runtime == "toy-runtime"
    t = load_target("toy-board")
    f = forecast(SPEC, t, "toy", "int3-toy", 256)
    assert f.weights == pytest.approx(SPEC.num_parameters * (3 / 8 + 2.0 / 16), abs=1)  # 3 bits + 2 B per 16
    assert f.kv_cache == SPEC.kv_cache_bytes(256, 2)  # act_bytes 2 from the plugin's facts
    assert f.fits


def test_export_planning_and_default_format_use_it(toy_backend, toy_target):
    from edgeslm.plugins import default_format
    from edgeslm.targets.plan import plan_export

    plan = plan_export(SPEC, load_target("toy-board"))
    assert (plan.format, plan.precision) == ("toy", "int3-toy")
    assert default_format() == "toy"  # it declares the lowest default_rank of the installed formats


def test_its_verb_joins_the_command_line(toy_backend, capsys):
    assert main(["toy-hello", "--name", "edge"]) == 0
    assert capsys.readouterr().out == "hello edge from the toy backend\n"
    assert main(["--help"]) == 0
    assert "toy-hello" in capsys.readouterr().out


def test_the_agent_reports_its_runtime_version(toy_backend):
    from edgeslm.telemetry.agent import _runtime_version

    assert _runtime_version("toy") == "1.2.3"


def test_fit_names_its_small_model_hint(toy_backend, toy_target):
    from edgeslm.errors import DoesNotFitError
    from edgeslm.targets.fit import refuse

    big = ModelSpec(architecture="llama", vocab_size=400_000, hidden_size=4096, num_layers=32, num_heads=32,
                    num_kv_heads=8, head_dim=128, intermediate_size=14336, context_length=8192, name="big")
    t = load_target("toy-board")
    err = refuse(big, t, forecast(big, t, "toy", "int3-toy", 256))
    assert isinstance(err, DoesNotFitError) and "`edgeslm toy-hello` says hello" in str(err)


def test_without_the_plugin_its_precision_is_refused(toy_target):
    with pytest.raises(UnknownPrecisionError, match="unknown precision 'int3-toy'"):
        load_target_file(toy_target)
    assert main(["toy-hello"]) == 2  # no such verb: a usage error
