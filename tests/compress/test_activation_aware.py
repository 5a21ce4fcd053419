"""Activation-aware techniques: Wanda sparsity, whitened low-rank, GPTQ (issue #19), checked on
their own math and on the tiny models of two families."""

import numpy as np
import pytest
import torch

from edgeslm.testing import requires_export

pytestmark = requires_export


def _calib(src, tokens=128):
    from edgeslm.compress.calibration import calibration_ids, input_stats

    return input_stats(src, calibration_ids(src, None, tokens))


def test_wanda_masks_have_the_asked_pattern():
    from edgeslm.compress.sparsity import wanda_mask

    torch.manual_seed(0)
    w, x2 = torch.randn(8, 32), torch.rand(32) * 10
    m = wanda_mask(w, x2, 0.5)
    assert (m.sum(1) == 16).all()  # per output row
    nm = wanda_mask(w, x2, 0.5, (2, 4))
    assert (nm.view(8, 8, 4).sum(-1) == 2).all()  # every group of 4 keeps 2
    # a large input feature protects its small weights: the criterion is |W| * ||X_j||
    x2 = torch.ones(32)
    x2[0] = 1e6
    assert wanda_mask(w, x2, 0.5)[:, 0].all()


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_wanda_beats_magnitude_on_the_output_error(family_source, family):
    from edgeslm.compress import layout
    from edgeslm.compress.sparsity import wanda_mask

    src = family_source(family)
    grams, _ = _calib(src)  # full Gram matrices X^T X: the output error is measurable exactly
    wins = 0
    for name, lin in layout.dense_linears(src.module, src.spec.description):
        w, g = lin.weight.detach().double(), grams[name]
        err = lambda mask: float(((w * ~mask) @ g * (w * ~mask)).sum())  # noqa: E731  ||(W - W_sparse) X||^2
        wins += err(wanda_mask(w, g.diagonal(), 0.5)) <= err(wanda_mask(w, torch.ones(w.shape[1]), 0.5))
    assert wins == sum(1 for _ in layout.dense_linears(src.module, src.spec.description))


def test_whitened_low_rank_keeps_more_output_than_plain_svd(family_source):
    from edgeslm.compress.lowrank import LowRankConfig, low_rank_factorize

    src = family_source("gemma3")
    grams, _ = _calib(src, 256)
    cfg = dict(energy=None, size_ratio=0.5, targets=("mlp", "attention"), calibration_tokens=256)
    plain = low_rank_factorize(src, LowRankConfig(**cfg))
    white = low_rank_factorize(src, LowRankConfig(**cfg, whiten=True, damp=1e-6))
    assert plain.spec.extra["low_rank"] == white.spec.extra["low_rank"]  # same ranks, same size

    def out_err(model):
        total = 0.0
        for name in model.spec.extra["low_rank"]:
            pair = model.module.get_submodule(name)
            approx = (pair.up.weight @ pair.down.weight).double()
            d = src.module.get_submodule(name).weight.double() - approx
            total += float((d @ grams[name] * d).sum().detach())
        return total

    assert out_err(white) < out_err(plain)


def test_global_allocation_meets_the_budget_and_varies_ranks(family_source):
    from edgeslm.compress.lowrank import LowRankConfig, low_rank_factorize

    src = family_source("llama")
    cfg = LowRankConfig(energy=None, size_ratio=0.6, targets=("mlp", "attention"), whiten=True,
                        allocation="global", multiple_of=1)
    lr = low_rank_factorize(src, cfg)
    dense = sum(a * b for a, b in (src.spec.linear_shape(n) for n in _names(src)))
    kept = sum(r * sum(src.spec.linear_shape(n)) for n, r in lr.spec.extra["low_rank"].items()) + \
        sum(a * b for n in _names(src) if n not in lr.spec.extra["low_rank"] for a, b in [src.spec.linear_shape(n)])
    assert kept <= 0.6 * dense * 1.01
    assert len(set(lr.spec.extra["low_rank"].values())) > 1
    with pytest.raises(ValueError, match="size_ratio"):
        low_rank_factorize(src, LowRankConfig(energy=0.9, allocation="global"))


def _names(src):
    from edgeslm.compress import layout

    return layout.linear_names(src.spec.description)


def _ort_roundtrip(w: torch.Tensor) -> np.ndarray:
    """What the ONNX int4 export stores for ``w`` (out, in): onnxruntime's MatMulNBits
    quantizer (block 32, asymmetric) applied to B = W^T, dequantized back to (out, in)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import quantize_matmul_4bits

    b = np.ascontiguousarray(w.detach().numpy().T.astype(np.float32))  # (K=in, N=out)
    k, n = b.shape
    kb = k // 32
    packed = np.zeros((n, kb, 16), np.uint8)
    zp = np.zeros((n, (kb + 1) // 2), np.uint8)
    scales = np.zeros((n, kb), np.float32)
    quantize_matmul_4bits(packed, b, scales, zp, 32, n, k, False)
    codes = np.stack([packed & 0x0F, packed >> 4], -1).reshape(n, kb, 32).astype(np.float32)
    zps = np.stack([zp & 0x0F, zp >> 4], -1).reshape(n, -1)[:, :kb].astype(np.float32)
    return ((codes - zps[..., None]) * scales[..., None]).reshape(n, k)


def test_gptq_and_rtn_weights_survive_onnxruntime_requantization():
    pytest.importorskip("onnxruntime")
    from edgeslm.compress.gptq import gptq, rtn

    torch.manual_seed(0)
    w = torch.randn(48, 128)
    x = torch.randn(300, 128) * torch.linspace(0.1, 3, 128)
    for q in (rtn(w), gptq(w, (x.T @ x).double())):
        np.testing.assert_allclose(_ort_roundtrip(q), q.numpy(), atol=1e-5)


def test_gptq_lowers_the_output_error_of_round_to_nearest():
    from edgeslm.compress.gptq import gptq, rtn

    torch.manual_seed(0)
    w = torch.randn(64, 128)
    x = torch.randn(512, 128) @ torch.randn(128, 128) * 0.3  # correlated inputs, as activations are
    h = (x.T @ x).double()
    err = lambda q: float(((x @ (w - q).T) ** 2).sum())  # noqa: E731
    assert err(gptq(w, h)) < 0.8 * err(rtn(w))


@pytest.mark.parametrize("method", ["gptq", "rtn"])
@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_int4_model_exports_to_int4_with_the_same_weights(family_source, family, method, tmp_path):
    pytest.importorskip("onnxruntime")
    from edgeslm.compress.gptq import QuantizeConfig, quantize_weights
    from edgeslm.exporting import export_model

    src = family_source(family)
    q = quantize_weights(src, QuantizeConfig(method=method, calibration_tokens=128))
    assert q.spec.num_parameters == src.spec.num_parameters
    bundle = export_model(q, tmp_path / "b", format="onnx", precision="int4", context_length=64, parity_tokens=8,
                          options={"accuracy_level": 0})
    assert bundle.manifest["parity"]["top1_agreement"] == 1.0  # float activations: the very weights


def test_recovery_of_a_sparse_model_keeps_its_zeros(family_source):
    from edgeslm.compress.distill import DistillConfig, distill
    from edgeslm.compress.prune import sparsity
    from edgeslm.compress.sparsity import SparsityConfig, activation_sparsify
    from edgeslm.testing import CORPUS

    src = family_source("gemma3")
    sparse = activation_sparsify(src, SparsityConfig(0.5, pattern="2:4"), calibration_tokens=64)
    data = [src.tokenizer.encode(t) for t in CORPUS * 2]
    out = distill(src, sparse, data, DistillConfig(steps=2, seq_len=32, batch_size=2, checkpoint_every=0,
                                                   keep_zeros=True), progress=False)
    assert sparsity(out.module) == pytest.approx(0.5)


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_sparsegpt_compensates_and_beats_wanda_on_the_output_error(nm):
    from edgeslm.compress.sparsity import sparsegpt, wanda_mask

    torch.manual_seed(0)
    w = torch.randn(64, 128)
    x = torch.randn(512, 128) @ torch.randn(128, 128) * 0.3
    h = (x.T @ x).double()
    s = sparsegpt(w, h, 0.5, nm)
    assert float((s == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    if nm:
        assert ((s != 0).view(64, 32, 4).sum(-1) <= 2).all()
    err = lambda q: float(((x @ (w - q).T) ** 2).sum())  # noqa: E731
    assert err(s) < err(w * wanda_mask(w, h.diagonal(), 0.5, nm))


def test_minmax_grid_reproduces_q4_1_blocks_exactly():
    """Weights already on Q4_1 blocks (a dequantized GGUF) come back unchanged from the
    min/max round-to-nearest, in torch and in the ONNX writer's blocks alike."""
    pytest.importorskip("edgeslm_onnx")
    from edgeslm.compress.gptq import rtn
    from edgeslm_onnx.weights import q4_1_blocks

    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, (16, 4, 32))
    codes[..., 0], codes[..., 1] = 0, 15  # llama.cpp's Q4_1: the block's min and max are codes 0 and 15
    d = rng.uniform(0.001, 0.05, (16, 4, 1)).astype(np.float16).astype(np.float32)
    m = rng.uniform(-0.4, 0.0, (16, 4, 1)).astype(np.float16).astype(np.float32)
    w = (codes * d + m).astype(np.float32).reshape(16, 128)
    np.testing.assert_allclose(rtn(torch.from_numpy(w), grid="minmax").numpy(), w, atol=1e-6)
    np.testing.assert_allclose(q4_1_blocks(w).dequantize(), w, atol=1e-6)
    # the MatMulNBits grid (0 in range, integer zero point) cannot hold them
    assert np.abs(rtn(torch.from_numpy(w)).numpy() - w).max() > 1e-3


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_on_the_minmax_grid_is_stored_exactly_and_beats_rtn(act_order):
    pytest.importorskip("edgeslm_onnx")
    from edgeslm.compress.gptq import gptq, rtn
    from edgeslm_onnx.weights import q4_1_blocks

    torch.manual_seed(0)
    w = torch.randn(64, 128)
    x = torch.randn(512, 128) @ torch.randn(128, 128) * 0.3
    h = (x.T @ x).double()
    q = gptq(w, h, grid="minmax", act_order=act_order)
    np.testing.assert_allclose(q4_1_blocks(q.numpy()).dequantize(), q.numpy(), atol=1e-5)  # export re-grids to it
    err = lambda q: float(((x @ (w - q).T) ** 2).sum())  # noqa: E731
    assert err(q) < 0.8 * err(rtn(w, grid="minmax"))


def test_act_order_gptq_stays_on_the_onnx_grid():
    pytest.importorskip("onnxruntime")
    from edgeslm.compress.gptq import gptq

    torch.manual_seed(0)
    w = torch.randn(48, 128)
    x = torch.randn(300, 128) * torch.linspace(0.1, 3, 128)
    q = gptq(w, (x.T @ x).double(), act_order=True)
    np.testing.assert_allclose(_ort_roundtrip(q), q.numpy(), atol=1e-5)


def test_minmax_model_exports_to_int4_minmax_with_the_same_weights(family_source, tmp_path):
    pytest.importorskip("onnxruntime")
    from edgeslm.compress.gptq import QuantizeConfig, quantize_weights
    from edgeslm.exporting import export_model

    src = family_source("llama")
    q = quantize_weights(src, QuantizeConfig(method="gptq", grid="minmax", act_order=True, calibration_tokens=128))
    bundle = export_model(q, tmp_path / "b", format="onnx", precision="int4-minmax", context_length=64,
                          parity_tokens=8, options={"accuracy_level": 0})
    quant = bundle.manifest["quantization"]
    assert quant["precision"] == "int4-minmax" and quant["matmuls_kept_float"] == 0
    assert quant["embedding"] == "Q8_0"
    assert bundle.manifest["parity"]["top1_agreement"] == 1.0
