"""scripts/import_graph.py: the tree has no import cycle and the core names no backend; and the
script does catch both (on small trees written here)."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("import_graph", REPO / "scripts" / "import_graph.py")
import_graph = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(import_graph)


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def _check(root: Path) -> tuple[int, str]:
    out = io.StringIO()
    return import_graph.check(root, out=out), out.getvalue()


def test_the_repository_has_no_cycle_and_a_core_that_names_no_backend():
    code, text = _check(REPO)
    assert code == 0, text
    assert "no cycle, the core names no backend" in text


def test_a_module_level_cycle_fails(tmp_path):
    root = _tree(tmp_path, {
        "edgeslm/__init__.py": "",
        "edgeslm/a.py": "from .b import B\nA = 1\n",
        "edgeslm/pkg/__init__.py": "from . import c\n",
        "edgeslm/pkg/c.py": "from .. import a\n",  # a -> b -> pkg (parent of pkg.c) -> pkg.c -> a
        "edgeslm/b.py": "import edgeslm.pkg.c\nB = 2\n",
    })
    code, text = _check(root)
    assert code == 1
    assert "import cycle among 4 modules: edgeslm.a, edgeslm.b, edgeslm.pkg, edgeslm.pkg.c" in text


def test_deferred_imports_are_not_cycles(tmp_path):
    root = _tree(tmp_path, {
        "edgeslm/__init__.py": "",
        "edgeslm/a.py": "from . import b\n",
        "edgeslm/b.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n"
                         "def f():\n    from . import a\n    return a\n"),
        "edgeslm/c.py": "from . import d\n",  # a submodule of one's own package is not an edge to its __init__
        "edgeslm/d.py": "",
    })
    assert _check(root)[0] == 0


def test_a_core_module_naming_a_backend_fails_even_in_a_function(tmp_path):
    root = _tree(tmp_path, {
        "edgeslm/__init__.py": "",
        "edgeslm/cli.py": "def micro():\n    from edgeslm_litert.micro import build\n    return build\n",
        "backends/litert/edgeslm_litert/__init__.py": "from edgeslm import cli\n",  # backends may use the core
    })
    code, text = _check(root)
    assert code == 1
    assert "core module names a backend: edgeslm/cli.py:2 imports edgeslm_litert.micro" in text
