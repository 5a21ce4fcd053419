"""The cross-backend conformance suite: every installed engine, the same black-box checks.

``backend`` is parametrized over ``edgeslm.plugins.available("edgeslm.engines")``, so a newly
installed plugin is tested without touching this folder. Each backend lists the cases it is
known to fail in its own folder, ``backends/<name>/conformance_skips.toml``::

    [skip]
    test_long_prompt_up_to_context = "static shapes on NPU; see issue #12"

and the suite skips exactly those, with the reason shown in the report.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from edgeslm.plugins import ENGINES, EXPORTERS, available

SKIPS_FILE = "conformance_skips.toml"
BACKENDS = available(ENGINES)


def known_skips(backend: str) -> dict[str, str]:
    """{test name: reason} from the backend's conformance_skips.toml (next to or above its package)."""
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group=ENGINES) if ep.name == backend]
    if not eps:
        return {}
    spec = importlib.util.find_spec(eps[0].module.split(".")[0])  # locate without importing the runtime
    if spec is None or not spec.submodule_search_locations:
        return {}
    pkg = Path(list(spec.submodule_search_locations)[0])
    for folder in (pkg, pkg.parent):
        f = folder / SKIPS_FILE
        if f.is_file():
            import tomllib

            data = tomllib.loads(f.read_text())
            return {str(k): str(v) for k, v in data.get("skip", {}).items()}
    return {}


def pytest_collection_modifyitems(config, items):
    cache: dict[str, dict[str, str]] = {}
    for item in items:
        backend = getattr(item, "callspec", None) and item.callspec.params.get("backend")
        if not backend or Path(str(item.fspath)).parent != Path(__file__).parent:
            continue
        skips = cache.setdefault(backend, known_skips(backend))
        reason = skips.get(item.originalname)
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"{backend} known skip: {reason}"))


@pytest.fixture(scope="session", params=BACKENDS or [pytest.param(None, marks=pytest.mark.skip(reason="no engine plugin installed"))])
def backend(request) -> str:
    return request.param


def _families() -> list[str]:
    from edgeslm.arch.families import supported_names

    return supported_names()


@pytest.fixture(scope="session", params=_families())
def family(request) -> str:
    """Every model family goes through every check (tiny random configs: edgeslm.testing.fake_config)."""
    return request.param


@pytest.fixture(scope="session")
def conformance_bundle(backend, family, bundle_factory):
    """A tiny fp32 bundle (context 128) of the family in the backend's format."""
    for mod in ("torch", "transformers"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip("needs the export extra to build tiny bundles: pip install 'edgeslm[export]'")
    if backend not in available(EXPORTERS):
        pytest.skip(f"no '{backend}' exporter installed to build a test bundle")
    return bundle_factory(backend, family=family)


@pytest.fixture
def model(conformance_bundle):
    import edgeslm

    with edgeslm.load(conformance_bundle) as m:
        yield m


@pytest.fixture(scope="session")
def source_greedy(family, family_source):
    """source_greedy(ids, n) -> the tiny source's own greedy continuation (HF torch module)."""
    import torch

    tiny_source = family_source(family)
    cache: dict[tuple, list[int]] = {}

    def run(ids, n: int) -> list[int]:
        key = (tuple(ids), n)
        if key not in cache:
            seq = list(ids)
            with torch.no_grad():  # full forward per step: no cache, no generation-config quirks
                for _ in range(n):
                    seq.append(int(tiny_source.module(torch.tensor([seq])).logits[0, -1].argmax()))
            cache[key] = seq[len(ids):]
        return cache[key]

    return run
