"""QuantSpec presets are what backends map to their quantizers."""

import pytest

from edgeslm.compress import PRESETS, QuantSpec


def test_presets():
    assert set(PRESETS) >= {"int8", "int4", "int4-gguf"}
    assert QuantSpec.preset("int8").bits == 8 and QuantSpec.preset("int8").group_size is None
    int4, gguf = QuantSpec.preset("int4"), QuantSpec.preset("int4-gguf")
    assert (int4.bits, int4.group_size, int4.method) == (4, 32, "requantize")
    assert (gguf.bits, gguf.group_size, gguf.method, gguf.symmetric) == (4, 32, "transcode", False)


def test_round_trip_and_validation():
    spec = QuantSpec(bits=4, group_size=64, symmetric=True, keep_higher=("embedding", "lm_head"))
    assert QuantSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError):
        QuantSpec(bits=3)
    with pytest.raises(ValueError):
        QuantSpec(bits=4, keep_higher=("norms",))
    with pytest.raises(ValueError):
        QuantSpec.preset("int2")
