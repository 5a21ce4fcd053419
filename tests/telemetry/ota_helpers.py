"""Tiny signed bundles for the rollout tests (made from the session's tiny ONNX export), and keys."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from edgeslm.bundle.manifest import hash_files
from edgeslm.bundle.signing import generate_keypair, sign_bundle


def keys(root: Path, name: str) -> tuple[Path, Path]:
    priv, pub, _ = generate_keypair(root / f"{name}.key")
    return priv, pub


def variant(src: Path, dst: Path, key: Path, created: str, scramble: bool = False) -> Path:
    """A copy of bundle ``src`` with its own manifest (``created`` differs), signed with ``key``.

    ``scramble`` reverses the weights file: the bundle still loads, hashes and signs correctly,
    but no longer answers like the original (what a broken quantization looks like to a device).
    """
    shutil.copytree(src, dst)
    (dst / "manifest.json.sig").unlink(missing_ok=True)
    m = json.loads((dst / "manifest.json").read_text())
    if scramble:
        data = dst / "model.onnx.data"
        w = np.fromfile(data, dtype=np.float32)
        w[:] = w[::-1] * 3.0
        w.tofile(data)
    m["created"] = created
    m["files"] = hash_files(dst)
    (dst / "manifest.json").write_text(json.dumps(m, indent=2) + "\n")
    sign_bundle(dst, key)
    return dst


def manifest_sha(bundle: Path) -> str:
    return hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
