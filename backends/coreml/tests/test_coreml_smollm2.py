"""SmolLM2-135M to Core ML (context 512): fp16 and int4 packages, sizes and traced-graph parity."""

import pytest

from edgeslm.testing import requires_export

pytestmark = [requires_export, pytest.mark.slow, pytest.mark.filterwarnings("ignore::RuntimeWarning")]
pytest.importorskip("coremltools", reason="needs the Core ML export extra: pip install 'edgeslm-coreml[export]'")


@pytest.fixture(scope="module")
def smollm2_coreml(smollm2_source, tmp_path_factory):
    from edgeslm.exporting import export_model

    out = tmp_path_factory.mktemp("smollm2-coreml")
    return {p: export_model(smollm2_source, out / p, format="coreml", precision=p, context_length=512,
                            parity_tokens=16, options={"emulation_tokens": 8}).manifest
            for p in ("fp16", "int4")}


def test_int4_is_at_most_35_percent_of_fp16(smollm2_coreml):
    fp16 = smollm2_coreml["fp16"]["coreml"]["bytes"]["package"]
    int4 = smollm2_coreml["int4"]["coreml"]["bytes"]["package"]
    assert 250e6 < fp16 < 290e6  # 135M parameters x 2 bytes
    assert int4 <= 0.35 * fp16


def test_parity_and_spec(smollm2_coreml, smollm2_source):
    s = smollm2_source.spec
    for precision, m in smollm2_coreml.items():
        assert m["parity"]["passed"] and m["parity"]["top1_agreement"] == 1.0, precision
        cm = m["coreml"]
        assert cm["checks"] == "passed"
        assert {st["name"]: st["shape"] for st in cm["states"]}["key_cache"] == [30, 1, 3, 512, 64]
    comp = smollm2_coreml["int4"]["coreml"]["compressed_weights"]
    assert comp["storage"] == {"int4": 7 * s.num_layers + 1}  # every matrix, the tied embedding/head too
    assert smollm2_coreml["fp16"]["verification"]["emulation"]["top1_agreement"] >= 0.9
