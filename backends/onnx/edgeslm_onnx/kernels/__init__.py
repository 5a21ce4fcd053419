"""edgeslm's onnxruntime custom ops: the fused Q4_1 / Q8_0 GEMV (issue #15) as ``ai.edgeslm`` ops.

``Q41MatMul`` / ``Q80MatMul`` (``ort_ops.c`` over ``q4_1_gemv.c``) read a weight repacked into
16-row records (:func:`pack_q4_1`, :func:`pack_q8_0`). The library is compiled from these sources
with the system's gcc at first use (``-O3 -shared -fPIC -pthread``, no ``-march``: the ISA is picked
at run time) into a cache keyed by the sources' hash: ``$EDGESLM_KERNEL_CACHE``, else
``$XDG_CACHE_HOME/edgeslm/kernels`` (``~/.cache/edgeslm/kernels``). ``$CC`` overrides the
compiler. Nothing is downloaded.

A graph that uses the ops (export option ``q4_1_offsets=fused``) needs :func:`register` on every
onnxruntime session opened on it; :func:`needs_library` tells from the model file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from edgeslm.errors import EdgeSLMError

DOMAIN = "ai.edgeslm"
OPS = ("Q41MatMul", "Q80MatMul")
HERE = Path(__file__).resolve().parent
SOURCES = ("ort_ops.c", "q4_1_gemv.c", "ort_abi.h")
FLAGS = ("-O3", "-shared", "-fPIC", "-pthread")
ROWS, QK = 16, 32


class KernelBuildError(EdgeSLMError):
    """The custom-op library could not be compiled (no C compiler, or it failed)."""


def cache_dir() -> Path:
    env = os.environ.get("EDGESLM_KERNEL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeslm" / "kernels"


def source_hash() -> str:
    h = hashlib.sha256()
    for name in SOURCES:
        h.update(name.encode() + b"\0" + (HERE / name).read_bytes() + b"\0")
    h.update(" ".join(FLAGS).encode())
    return h.hexdigest()[:16]


def library_path(build: bool = True) -> Path:
    """The compiled library, built into the cache if it is not there yet."""
    path = cache_dir() / f"libedgeslm_ort_ops-{source_hash()}.so"
    if path.exists() or not build:
        return path
    cc = os.environ.get("CC") or "gcc"
    exe = shutil.which(cc)
    if exe is None:
        raise KernelBuildError(f"the fused Q4_1 kernel (q4_1_offsets=fused) is compiled on this machine at first use, "
                               f"and no C compiler was found ({cc!r}; install gcc or set CC). Bundles exported "
                               "without q4_1_offsets=fused do not need it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        proc = subprocess.run([exe, *FLAGS, str(HERE / "ort_ops.c"), "-o", tmp, "-lm"], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise KernelBuildError(f"compiling the fused Q4_1 kernel with {exe} failed:\n{proc.stderr.strip()[-2000:]}")
        os.replace(tmp, path)  # atomic: concurrent builders each write their own temporary file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def register(session_options) -> Path:
    """Build if needed and register the library on an ``onnxruntime.SessionOptions``."""
    path = library_path()
    try:
        session_options.register_custom_ops_library(str(path))
    except Exception as exc:  # the library's ABI checks failed, or onnxruntime could not load it
        raise KernelBuildError(f"onnxruntime refused the edgeslm custom-op library {path}: {exc}") from exc
    return path


def info() -> str:
    """What the loaded library reports while a session holds it ("ort=... api=... path=... parallel=...")."""
    import ctypes

    lib = ctypes.CDLL(str(library_path()))
    lib.edgeslm_ops_info.restype = ctypes.c_char_p
    return lib.edgeslm_ops_info().decode()


def needs_library(model) -> bool:
    """Whether an ONNX model (a path or a ModelProto) imports the ``ai.edgeslm`` domain."""
    if not hasattr(model, "opset_import"):
        import onnx

        model = onnx.load(str(model), load_external_data=False)
    return any(o.domain == DOMAIN for o in model.opset_import)


# -- weight layouts (q4_1_gemv.c's header comment) -----------------------------------------------


def _interleave(codes: np.ndarray) -> np.ndarray:
    """(N, nb, 32) -> (N/16, nb, 4, 2, 64): chunk t, half h (elements 8t + 4h .. +3), byte 4r + e."""
    n, nb, _ = codes.shape
    c = codes.reshape(n // ROWS, ROWS, nb, 4, 2, 4)  # g, r, b, t, h, e
    return c.transpose(0, 2, 3, 4, 1, 5).reshape(n // ROWS, nb, 4, 2, ROWS * 4)


def _group(a: np.ndarray) -> np.ndarray:
    n, nb = a.shape
    return a.astype(np.float16).reshape(n // ROWS, ROWS, nb).transpose(0, 2, 1).copy().view(np.uint8)


def pack_q4_1(codes: np.ndarray, d: np.ndarray, m: np.ndarray) -> np.ndarray:
    """codes (N, K/32, 32) 0..15, d and m (N, K/32) (fp16 values) -> uint8 [N/16 * K/32 * 320]."""
    n, nb, _ = codes.shape
    c = _interleave(codes.astype(np.uint8))
    nib = (c[:, :, :, 0] | (c[:, :, :, 1] << 4)).astype(np.uint8).reshape(n // ROWS, nb, 256)
    return np.ascontiguousarray(np.concatenate([nib, _group(d), _group(m)], axis=2)).reshape(-1)


def pack_q8_0(codes: np.ndarray, d: np.ndarray) -> np.ndarray:
    """codes (N, K/32, 32) int8, d (N, K/32) (fp16 values) -> uint8 [N/16 * K/32 * 544]."""
    n, nb, _ = codes.shape
    c = _interleave(codes.astype(np.int8).view(np.uint8)).reshape(n // ROWS, nb, 512)
    return np.ascontiguousarray(np.concatenate([c, _group(d)], axis=2)).reshape(-1)


def fp16_exact(*arrays: np.ndarray) -> bool:
    """Whether every value survives a round trip through fp16 (the records store d and m so)."""
    return all(np.array_equal(a.astype(np.float16).astype(a.dtype), a) for a in arrays)
