"""Fixtures for the compression tests: variants of the session's tiny Llama.

Every technique here is torch work: without the export extra each module here is one visible
skip naming the extra, not a collection error (a module-level skip in this conftest would crash
`pytest tests/compress`, where this file loads before collection starts).
"""

from __future__ import annotations

import copy
import importlib.util

import pytest

NEEDS = ("torch", "transformers")

if not all(importlib.util.find_spec(m) for m in NEEDS):
    class _NeedsExport(pytest.Module):
        def collect(self):
            pytest.skip("the compression tests need the export extra (torch, transformers): "
                        "pip install 'edgeslm[export]'")

    def pytest_pycollect_makemodule(module_path, parent):
        return _NeedsExport.from_parent(parent, path=module_path)


@pytest.fixture(scope="session")
def lowrankish_source(tiny_source):
    """The tiny model with MLP matrices made nearly rank 8 (real models' spectra decay; random
    ones are flat), so energy-based ranks and dense-vs-factorized agreement mean something."""
    import torch

    from edgeslm.compress.model import derive

    module = copy.deepcopy(tiny_source.module)
    with torch.no_grad():
        for layer in module.model.layers:
            for lin in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
                u, s, vh = torch.linalg.svd(lin.weight, full_matrices=False)
                s[8:] *= 0.01
                lin.weight.copy_(u @ torch.diag(s) @ vh)
    return derive(tiny_source, module, {"technique": "test_fixture"}, name="tiny-lowrankish")


def logits(source, text="The capital of France is Paris."):
    import torch

    ids = torch.tensor([source.tokenizer.encode(text)])
    with torch.no_grad():
        return source.module(ids).logits[0]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """These models are tiny: on a shared 2-core machine torch's thread pool only adds waiting
    (measured 55 s -> 20 s for the CLI report test). Restored after each test."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
