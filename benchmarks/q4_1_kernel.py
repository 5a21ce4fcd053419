"""A fused Q4_1 GEMV of our own against onnxruntime's MatMulNBits (issue #15 feasibility).

    python benchmarks/q4_1_kernel.py --rounds 7 --threads 1,2

Compiles ``backends/onnx/edgeslm_onnx/kernels/q4_1_gemv.c`` into out/ (gcc, no -march: runtime dispatch),
makes random Q4_1 weights of SmolLM2-135M's per-layer shapes, 30 layers of distinct weights
(~66 MB at 20 bytes per 32 weights, more than the caches), checks the kernel against a float64
reference (dequantized W times the dequantized int8 x: tight; times fp32 x: reported), then
times, interleaved over rounds (median), one decode step's worth of the 120 products:
  kernel        the fused kernel (fp16 d and m, int8 x with block sums), T threads
  ort_none      MatMulNBits (4 bits, block 32, accuracy_level 4, fp32 scales, zero point 8)
                without the offsets: the bound of any graph, WRONG output
  ort_rows      MatMulNBits + the exact offset term in the graph writer's "rows" form (K/32
                extra output rows give the block sums of the int8 x; Split, MatMul, Add)
  (+ the tied lm_head, Q8_0 49152 x 576, as kernel_q8 / ort_q8 when --lm-head)
Each ORT variant is one graph of 120 independent chains on two inputs, sequential executor.
Writes benchmarks/results/q4_1_kernel.json.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from run import measure_bandwidth  # noqa: E402  (the same bandwidth figure as run.py)

SRC = HERE.parent / "backends" / "onnx" / "edgeslm_onnx" / "kernels" / "q4_1_gemv.c"  # shared with the onnxruntime custom op
QK, ROWS = 32, 16
PATHS = {"scalar": 1, "avx2": 2, "avx512vnni": 3}

#: SmolLM2-135M per layer, (K, N): packed q/k/v, o_proj, packed gate/up, down_proj
LAYER_SHAPES = [(576, 960), (576, 576), (576, 3072), (1536, 576)]
LM_HEAD = (576, 49152)


# ---------------------------------------------------------------- build and load

def build(out_dir: Path = REPO / "out") -> Path:
    """gcc -O3 -shared -fPIC -pthread into out_dir/libq41.so (rebuilt when the source is newer)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    so = out_dir / "libq41.so"
    if not so.exists() or so.stat().st_mtime < SRC.stat().st_mtime:
        tmp = so.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run(["gcc", "-O3", "-shared", "-fPIC", "-pthread", str(SRC), "-o", str(tmp), "-lm"],
                       check=True, capture_output=True, text=True)
        os.replace(tmp, so)
    return so


class Kernel:
    def __init__(self, so: Path):
        lib = self.lib = ctypes.CDLL(str(so))
        P, I = ctypes.c_void_p, ctypes.c_int
        lib.q41_supported.argtypes, lib.q41_supported.restype = [I], I
        lib.q41_resolve.argtypes, lib.q41_resolve.restype = [I], I
        lib.q41_gemv.argtypes = lib.q80_gemv.argtypes = [P, I, I, P, P, I, I]
        lib.q41_gemv.restype = lib.q80_gemv.restype = I
        lib.gemv_many.argtypes = [I, P, P, P, P, P, P, I, I]
        lib.gemv_many.restype = I
        lib.q8_1_quantize.argtypes = [P, I, P, P, P, P]
        lib.q41_set_spin.argtypes, lib.q41_set_spin.restype = [I], None

    def supported(self) -> list[str]:
        return [name for name, p in PATHS.items() if self.lib.q41_supported(p)]

    def quantize_x(self, x: np.ndarray):
        """(qx int8 (K,), dx (K/32,), sx (K/32,), sumq (K/32,)) exactly as the kernel does it."""
        x = np.ascontiguousarray(x, np.float32)
        k = x.size
        qx, dx = np.empty(k, np.int8), np.empty(k // QK, np.float32)
        sx, sumq = np.empty(k // QK, np.float32), np.empty(k // QK, np.int32)
        self.lib.q8_1_quantize(x.ctypes.data, k, qx.ctypes.data, dx.ctypes.data, sx.ctypes.data, sumq.ctypes.data)
        return qx, dx, sx, sumq

    def gemv(self, packed: np.ndarray, n: int, k: int, x: np.ndarray, path: int = 0, threads: int = 1,
             q8: bool = False) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        y = np.empty(n, np.float32)
        fn = self.lib.q80_gemv if q8 else self.lib.q41_gemv
        if fn(packed.ctypes.data, n, k, x.ctypes.data, y.ctypes.data, path, threads) != 0:
            raise ValueError(f"kernel refused path {path} / shape {n}x{k}")
        return y


class Batch:
    """Arguments of one gemv_many call (the 120 products of a step), built once."""

    def __init__(self, kernel: Kernel, mats: list, xs: dict):
        self.kernel, self.count = kernel, len(mats)
        arr = lambda ctype, vals: (ctype * len(vals))(*vals)
        self.kind = arr(ctypes.c_int, [1 if m["q8"] else 0 for m in mats])
        self.W = arr(ctypes.c_void_p, [m["packed"].ctypes.data for m in mats])
        self.N = arr(ctypes.c_int, [m["n"] for m in mats])
        self.K = arr(ctypes.c_int, [m["k"] for m in mats])
        self.x = arr(ctypes.c_void_p, [xs[m["k"]].ctypes.data for m in mats])
        self.ys = [np.empty(m["n"], np.float32) for m in mats]
        self.y = arr(ctypes.c_void_p, [y.ctypes.data for y in self.ys])

    def run(self, path: int = 0, threads: int = 1) -> list[np.ndarray]:
        rc = self.kernel.lib.gemv_many(self.count, self.kind, self.W, self.N, self.K, self.x, self.y, path, threads)
        if rc != 0:
            raise ValueError("gemv_many failed")
        return self.ys


# ---------------------------------------------------------------- weights, packing, reference

def random_q4_1(rng, n: int, k: int):
    """codes (N, K/32, 32) 0..15, d and m (N, K/32) fp16, magnitudes like a trained model's."""
    nb = k // QK
    codes = rng.integers(0, 16, size=(n, nb, QK), dtype=np.uint8)
    d = (rng.uniform(0.002, 0.02, size=(n, nb))).astype(np.float16)
    m = (-8.0 * d.astype(np.float32) * rng.uniform(0.7, 1.3, size=(n, nb))).astype(np.float16)
    return codes, d, m


def random_q8_0(rng, n: int, k: int):
    codes = rng.integers(-127, 128, size=(n, k // QK, QK), dtype=np.int8)
    d = rng.uniform(0.0005, 0.005, size=(n, k // QK)).astype(np.float16)
    return codes, d


def _interleave(codes: np.ndarray) -> np.ndarray:
    """(N, nb, 32) codes -> (N/16, nb, 4, 2, 64): chunk t, half h (elements 8t + 4h .. +3), byte 4r + e."""
    n, nb, _ = codes.shape
    c = codes.reshape(n // ROWS, ROWS, nb, 4, 2, 4)  # g, r, b, t, h, e
    return c.transpose(0, 2, 3, 4, 1, 5).reshape(n // ROWS, nb, 4, 2, ROWS * 4)


def pack_q4_1(codes: np.ndarray, d: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The kernel's layout: [N/16][K/32][256 bytes codes | 16 fp16 d | 16 fp16 m] (20 bytes per 32)."""
    n, nb, _ = codes.shape
    assert n % ROWS == 0
    c = _interleave(codes)
    nib = (c[:, :, :, 0] | (c[:, :, :, 1] << 4)).astype(np.uint8).reshape(n // ROWS, nb, 256)
    grp = lambda a: a.astype(np.float16).reshape(n // ROWS, ROWS, nb).transpose(0, 2, 1).copy().view(np.uint8)
    return np.ascontiguousarray(np.concatenate([nib, grp(d), grp(m)], axis=2))


def pack_q8_0(codes: np.ndarray, d: np.ndarray) -> np.ndarray:
    """[N/16][K/32][512 bytes codes | 16 fp16 d] (34 bytes per 32)."""
    n, nb, _ = codes.shape
    c = _interleave(codes.view(np.uint8)).reshape(n // ROWS, nb, 512)
    dd = d.astype(np.float16).reshape(n // ROWS, ROWS, nb).transpose(0, 2, 1).copy().view(np.uint8)
    return np.ascontiguousarray(np.concatenate([c, dd], axis=2))


def dequant_q4_1(codes, d, m) -> np.ndarray:
    """float64 (N, K)."""
    w = codes.astype(np.float64) * d.astype(np.float64)[..., None] + m.astype(np.float64)[..., None]
    return w.reshape(codes.shape[0], -1)


def dequant_q8_0(codes, d) -> np.ndarray:
    return (codes.astype(np.float64) * d.astype(np.float64)[..., None]).reshape(codes.shape[0], -1)


def reference(kernel: Kernel, w64: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(W @ dequantized int8 x, |W| @ |that x| (the error scale), W @ fp32 x), float64."""
    qx, dx, _, _ = kernel.quantize_x(x)
    xq = qx.astype(np.float64).reshape(-1, QK) * dx.astype(np.float64)[:, None]
    xq = xq.reshape(-1)
    return w64 @ xq, np.abs(w64) @ np.abs(xq), w64 @ x.astype(np.float64)


# ---------------------------------------------------------------- onnxruntime graphs

def ort_graph(mats: list, offsets: str, acc_level: int = 4):
    """One ONNX model: for each product i, MatMulNBits(x_K; q, fp32 d, zero point 8) -> y_i,
    plus the offsets ("rows": K/32 extra output rows whose codes are 9 in block b, zero
    elsewhere, give sum of int8 x per block; Split; MatMul with (m + 8d).T; Add) or not ("none")."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, outputs = [], [], []
    ks = sorted({m["k"] for m in mats})
    inputs = [helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, [1, k]) for k in ks]
    for i, mt in enumerate(mats):
        k, n = mt["k"], mt["n"]
        nb = k // QK
        if mt["q8"]:
            codes = (mt["codes"].astype(np.int16) + 128).astype(np.uint8)
            scales = mt["d"].astype(np.float32)
            q = codes
            zp = np.full(n * nb, 128, np.uint8)
            inits += [numpy_helper.from_array(q, f"q{i}"), numpy_helper.from_array(scales.reshape(-1), f"s{i}"),
                      numpy_helper.from_array(zp, f"z{i}")]
            nodes.append(helper.make_node("MatMulNBits", [f"x{k}", f"q{i}", f"s{i}", f"z{i}"], [f"y{i}"],
                                          domain="com.microsoft", K=k, N=n, bits=8, block_size=QK,
                                          accuracy_level=acc_level))
            outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None))
            continue
        codes, d32 = mt["codes"], mt["d"].astype(np.float32)
        offset = (mt["m"].astype(np.float32) + 8.0 * d32)  # w = d (q - 8) + (m + 8d)
        rows = offsets == "rows"
        if rows:
            extra = np.full((nb, nb, QK), 8, np.uint8)
            extra[np.arange(nb), np.arange(nb)] = 9
            codes = np.concatenate([codes, extra])
            d32 = np.concatenate([d32, np.ones((nb, nb), np.float32)])
        packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
        n_all = codes.shape[0]
        inits += [numpy_helper.from_array(packed, f"q{i}"), numpy_helper.from_array(d32.reshape(-1), f"s{i}")]
        y = f"y{i}" if not rows else f"yr{i}"
        nodes.append(helper.make_node("MatMulNBits", [f"x{k}", f"q{i}", f"s{i}"], [y], domain="com.microsoft",
                                      K=k, N=n_all, bits=4, block_size=QK, accuracy_level=acc_level))
        if rows:
            inits += [numpy_helper.from_array(np.array([n, nb], np.int64), f"sp{i}"),
                      numpy_helper.from_array(np.ascontiguousarray(offset.T), f"off{i}")]
            nodes += [helper.make_node("Split", [y, f"sp{i}"], [f"ym{i}", f"bs{i}"], axis=-1),
                      helper.make_node("MatMul", [f"bs{i}", f"off{i}"], [f"o{i}"]),
                      helper.make_node("Add", [f"ym{i}", f"o{i}"], [f"y{i}"])]
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, f"q41_{offsets}", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


def ort_session(model, threads: int, path: Path, spin: bool = True):
    import onnx
    import onnxruntime as ort

    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------- main

def make_mats(rng, layers: int, lm_head: bool) -> list:
    mats = []
    for _ in range(layers):
        for k, n in LAYER_SHAPES:
            codes, d, m = random_q4_1(rng, n, k)
            mats.append({"k": k, "n": n, "q8": False, "codes": codes, "d": d, "m": m,
                         "packed": pack_q4_1(codes, d, m)})
    if lm_head:
        k, n = LM_HEAD
        codes, d = random_q8_0(rng, n, k)
        mats.append({"k": k, "n": n, "q8": True, "codes": codes, "d": d, "packed": pack_q8_0(codes, d)})
    return mats


def bytes_read(mats: list, variant: str) -> int:
    """Weight bytes one pass reads: kernel 20 (Q4_1) / 34 (Q8_0) per 32; MatMulNBits 16 codes + 4
    fp32 scale per 32 (8-bit: 32 + 4 + 1 zero point), "rows" + K/32 extra rows + 4 per 32 offsets."""
    total = 0
    for m in mats:
        k, n = m["k"], m["n"]
        nb = k // QK
        if variant == "kernel":
            total += n * nb * (34 if m["q8"] else 20)
        elif m["q8"]:
            total += n * nb * 37
        else:
            total += n * nb * 20 + (nb * nb * 20 + n * nb * 4 if variant == "ort_rows" else 0)
    return total


def timeit(fn, reps: int) -> float:
    """Median seconds of ``reps`` calls after one warm-up."""
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=20, help="decode steps per variant per round (median)")
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--lm-head", action="store_true", help="also time the tied lm_head (Q8_0 49152 x 576) alone")
    ap.add_argument("--no-spin", action="store_true",
                    help="idle threads sleep: the kernel's pool sleeps at once (q41_set_spin(0)), onnxruntime "
                         "allow_spinning 0 (default: both spin first)")
    ap.add_argument("--spin", type=int, default=2000, help="pauses the kernel's pool spins before it sleeps (~50 ns each)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "q4_1_kernel.json")
    args = ap.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]

    uptime0 = os.popen("uptime").read().strip()
    kernel = Kernel(build())
    kernel.lib.q41_set_spin(0 if args.no_spin else args.spin)
    paths = kernel.supported()
    print(f"kernel paths supported here: {paths}; auto = {kernel.lib.q41_resolve(0)}", flush=True)
    rng = np.random.default_rng(0)
    mats = make_mats(rng, args.layers, lm_head=False)
    xs = {k: rng.standard_normal(k).astype(np.float32) for k in {m["k"] for m in mats}}

    # ---- correctness: every path, the first layer's four products (+ a Q8_0 head slice)
    check = {}
    head_codes, head_d = random_q8_0(rng, 2048, LM_HEAD[0])
    head_pack = pack_q8_0(head_codes, head_d)
    for name in paths:
        worst_q, worst_f = 0.0, 0.0
        for m in mats[:4] + [{"k": LM_HEAD[0], "n": 2048, "q8": True, "codes": head_codes, "d": head_d,
                              "packed": head_pack}]:
            w64 = dequant_q8_0(m["codes"], m["d"]) if m["q8"] else dequant_q4_1(m["codes"], m["d"], m["m"])
            ref_q, scale, ref_f = reference(kernel, w64, xs[m["k"]])
            for t in threads:
                y = kernel.gemv(m["packed"], m["n"], m["k"], xs[m["k"]], PATHS[name], t, q8=m["q8"])
                worst_q = max(worst_q, float(np.max(np.abs(y - ref_q) / scale)))
                if not m["q8"]:
                    worst_f = max(worst_f, float(np.max(np.abs(y - ref_f)) / np.max(np.abs(ref_f))))
        check[name] = {"max_err_vs_int8_x_ref_rel_to_abs_dot": worst_q,
                       "max_err_vs_fp32_x_ref_rel_to_max_abs_y": worst_f}
        print(f"check {name}: vs int8-x reference {worst_q:.2e} (of |W||x|), vs fp32-x {worst_f:.2e} (of max|y|)",
              flush=True)
        assert worst_q < 1e-5, name

    # ---- onnxruntime graphs
    import onnxruntime as ort
    tmp = REPO / "out" / "q4_1_kernel"
    tmp.mkdir(parents=True, exist_ok=True)
    feeds = {f"x{k}": x.reshape(1, -1) for k, x in xs.items()}
    sessions = {}
    for off in ("none", "rows"):
        model = ort_graph(mats, off)
        for t in threads:
            sessions[(f"ort_{off}", t)] = ort_session(model, t, tmp / f"ort_{off}_t{t}.onnx", spin=not args.no_spin)
        del model
    # ORT exactness of the rows form against the reference (int8 x inside MatMulNBits: report only)
    outs = sessions[("ort_rows", threads[0])].run(None, feeds)
    ort_err = max(float(np.max(np.abs(outs[i].reshape(-1) - reference(kernel, dequant_q4_1(
        mats[i]["codes"], mats[i]["d"], mats[i]["m"]), xs[mats[i]["k"]])[2]) / np.max(np.abs(outs[i])))) for i in range(4))
    print(f"ort rows vs fp32-x reference: {ort_err:.2e} (of max|y|)", flush=True)

    batch = Batch(kernel, mats, xs)
    variants = [(f"kernel_{p}", t) for p in paths if p != "scalar" for t in threads] + list(sessions)
    runs = {v: [] for v in variants}
    bw = measure_bandwidth()
    print(f"read bandwidth {bw / 1e9:.1f} GB/s; uptime: {os.popen('uptime').read().strip()}", flush=True)
    loads = [os.getloadavg()[0]]
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for v in order:
            name, t = v
            if name.startswith("kernel_"):
                p = PATHS[name[len("kernel_"):]]
                runs[v].append(timeit(lambda: batch.run(p, t), args.reps))
            else:
                s = sessions[v]
                runs[v].append(timeit(lambda: s.run(None, feeds), args.reps))
        loads.append(os.getloadavg()[0])
        print(f"round {r}: " + ", ".join(f"{n}/{t}: {runs[(n, t)][-1] * 1e6:.0f}" for n, t in variants), flush=True)

    head = {}
    if args.lm_head:
        hm = make_mats(rng, 0, lm_head=True)
        hx = {LM_HEAD[0]: xs[LM_HEAD[0]]}
        hb = Batch(kernel, hm, hx)
        hs = {t: ort_session(ort_graph(hm, "none"), t, tmp / f"ort_q8_t{t}.onnx", spin=not args.no_spin) for t in threads}
        feed_h = {f"x{LM_HEAD[0]}": hx[LM_HEAD[0]].reshape(1, -1)}
        hr = {(w, t): [] for w in ("kernel", "ort") for t in threads}
        for r in range(args.rounds):  # interleaved, as the step
            for w, t in (list(hr) if r % 2 == 0 else list(hr)[::-1]):
                fn = (lambda: hb.run(0, t)) if w == "kernel" else (lambda: hs[t].run(None, feed_h))
                hr[(w, t)].append(timeit(fn, args.reps))
        for t in threads:
            k_us, o_us = (statistics.median(hr[(w, t)]) * 1e6 for w in ("kernel", "ort"))
            head[t] = {"kernel_us": k_us, "ort_us": o_us, "kernel_gb_s": bytes_read(hm, "kernel") / k_us / 1e3,
                       "ort_gb_s": bytes_read(hm, "ort") / o_us / 1e3, "speedup": o_us / k_us,
                       "kernel_mb": bytes_read(hm, "kernel") / 1e6, "ort_mb": bytes_read(hm, "ort") / 1e6}
            print(f"lm_head Q8_0 {t} thread(s): kernel {k_us:.0f} us, ort {o_us:.0f} us ({o_us / k_us:.2f}x)", flush=True)

    rows = []
    for name, t in variants:
        us = statistics.median(runs[(name, t)]) * 1e6
        base = "kernel" if name.startswith("kernel") else name
        nbytes = bytes_read(mats, base)
        ref = statistics.median(runs[("ort_rows", t)]) * 1e6
        rows.append({"variant": name, "threads": t, "us_per_step": us, "us_min": min(runs[(name, t)]) * 1e6,
                     "us_rounds": [x * 1e6 for x in runs[(name, t)]],
                     "weight_mb": nbytes / 1e6, "gb_s": nbytes / us / 1e3, "pct_of_bound": 100 * nbytes / us / 1e3 / (bw / 1e9),
                     "x_ort_rows": ref / us})
    print(f"\n{'variant':22s} thr  us/step  (min)   MB   GB/s  %bound  x ort_rows")
    for r in rows:
        print(f"{r['variant']:22s} {r['threads']:3d} {r['us_per_step']:8.0f} {r['us_min']:6.0f} {r['weight_mb']:5.1f} {r['gb_s']:6.1f}"
              f" {r['pct_of_bound']:6.0f}% {r['x_ort_rows']:7.2f}")
    result = {"argv": sys.argv[1:] if argv is None else list(argv),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": _cpu(), "onnxruntime": ort.__version__,
              "uptime_at_start": uptime0, "uptime_at_end": os.popen("uptime").read().strip(), "loadavg_per_round": loads,
              "bandwidth_gb_s": bw / 1e9, "layers": args.layers, "products": len(mats), "rounds": args.rounds,
              "reps": args.reps, "spinning": not args.no_spin, "kernel_spin_pauses": 0 if args.no_spin else args.spin, "kernel_paths": paths, "check": check, "ort_rows_err_vs_fp32_x": ort_err,
              "rows": rows, "lm_head_q8_0": head}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


if __name__ == "__main__":
    sys.exit(main())
