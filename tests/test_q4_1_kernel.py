"""The fused Q4_1 / Q8_0 GEMV of benchmarks/q4_1_kernel (issue #15 feasibility): exact against a
float64 reference of the dequantized weights times the dequantized int8 activations, on every
dispatch path this CPU supports, at 1 and 2 threads; the paths agree bit for bit."""

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("q4_1_kernel", REPO / "benchmarks" / "q4_1_kernel.py")
qk = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(qk)

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not found: the kernel is compiled at test time")

SHAPES = [(16, 32), (32, 64), (48, 96), (160, 576), (64, 1536)]  # (N, K): N % 16 == 0, K % 32 == 0


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    return qk.Kernel(qk.build(tmp_path_factory.mktemp("q41")))


def test_dispatch(kernel):
    assert "scalar" in kernel.supported()
    assert kernel.lib.q41_resolve(0) == max(qk.PATHS[p] for p in kernel.supported())
    if "avx512vnni" not in kernel.supported():
        assert kernel.lib.q41_resolve(qk.PATHS["avx512vnni"]) == -1


@pytest.mark.parametrize("q8", [False, True], ids=["q4_1", "q8_0"])
@pytest.mark.parametrize("n,k", SHAPES)
def test_exact_every_path(kernel, n, k, q8):
    rng = np.random.default_rng(n * 7919 + k + q8)
    if q8:
        codes, d = qk.random_q8_0(rng, n, k)
        packed, w64 = qk.pack_q8_0(codes, d), qk.dequant_q8_0(codes, d)
    else:
        codes, d, m = qk.random_q4_1(rng, n, k)
        packed, w64 = qk.pack_q4_1(codes, d, m), qk.dequant_q4_1(codes, d, m)
    x = (rng.standard_normal(k) * rng.uniform(0.1, 10, size=k)).astype(np.float32)
    x[:32] = 0.0  # an all-zero block: scale 0
    ref, scale, ref_f32 = qk.reference(kernel, w64, x)
    first = None
    for path in kernel.supported():
        for threads in (1, 2):
            y = kernel.gemv(packed, n, k, x, qk.PATHS[path], threads, q8=q8)
            assert np.all(np.abs(y - ref) <= 1e-5 * scale + 1e-30), (path, threads)
            # int8 activations: close to the fp32-x product, not equal
            assert np.max(np.abs(y - ref_f32)) <= 0.05 * np.max(np.abs(ref_f32)), (path, threads)
            if first is None:
                first = y
            np.testing.assert_array_equal(y, first, err_msg=f"{path}/{threads} differs from the first path")


def test_rejects_bad_shape(kernel):
    packed = np.zeros(320, np.uint8)
    with pytest.raises(ValueError):
        kernel.gemv(packed, 8, 32, np.zeros(32, np.float32))


def test_unsupported_path_refused(kernel):
    unsupported = [p for name, p in qk.PATHS.items() if name not in kernel.supported()]
    if not unsupported:
        pytest.skip("every path is supported on this CPU")
    with pytest.raises(ValueError):
        kernel.gemv(np.zeros(320, np.uint8), 16, 32, np.zeros(32, np.float32), unsupported[0])


@pytest.mark.parametrize("spin", [20000, 0], ids=["spin", "sleep"])
def test_many_products_pool(kernel, spin):
    """gemv_many: a chain of mixed Q4_1 / Q8_0 products through the thread pool (spinning or
    sleeping waits, 1-3 threads, repeated) gives each product's single-call result."""
    rng = np.random.default_rng(5)
    mats, expect = [], []
    xs = {k: rng.standard_normal(k).astype(np.float32) for k in (64, 96)}
    for i, (n, k) in enumerate([(48, 64), (16, 96), (80, 64), (32, 96), (16, 64), (64, 96)]):
        if i % 3 == 2:
            codes, d = qk.random_q8_0(rng, n, k)
            m = {"k": k, "n": n, "q8": True, "packed": qk.pack_q8_0(codes, d)}
        else:
            m = {"k": k, "n": n, "q8": False, "packed": qk.pack_q4_1(*qk.random_q4_1(rng, n, k))}
        mats.append(m)
        expect.append(kernel.gemv(m["packed"], n, k, xs[k], q8=m["q8"]))
    batch = qk.Batch(kernel, mats, xs)
    kernel.lib.q41_set_spin(spin)
    try:
        for rep in range(60):
            for y, e in zip(batch.run(0, 1 + rep % 3), expect):
                np.testing.assert_array_equal(y, e)
    finally:
        kernel.lib.q41_set_spin(2000)
