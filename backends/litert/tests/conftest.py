"""Fixtures shared by the LiteRT test modules."""

from __future__ import annotations

import importlib.util

import pytest


@pytest.fixture(scope="session")
def smollm2_litert_fp32(smollm2_source, tmp_path_factory):
    """SmolLM2 exported to an fp32 LiteRT bundle (KV cache 256, full parity check), once per session:
    the conversion takes minutes, and the fp32 parity test and the LiteRT-LM test both read it (one
    xdist group: conftest.SHARED_FIXTURES)."""
    from edgeslm.exporting import export_model

    if importlib.util.find_spec("litert_torch") is None:
        pytest.skip("needs: pip install --no-deps litert-torch==0.10.0 litert-converter==0.5.0")
    return export_model(smollm2_source, tmp_path_factory.mktemp("smollm2") / "litert-fp32", format="litert",
                        precision="fp32", context_length=256)
