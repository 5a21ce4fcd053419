"""`edgeslm verify --on-device`: the parity reference a bundle carries, replayed by its own engine.

Each bundle is a tiny real export (onnx, openvino, litert); the tampered case changes the weights
*and* re-hashes the manifest (what a broken pipeline or an attacker without the signing key
could do), so only the behavioural check can notice.
"""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest

from edgeslm.cli import main
from edgeslm.testing import requires_export
from edgeslm.verify.metrics import kl_divergence
from edgeslm.verify.reference import REFERENCE_FILE, load_reference_file, threshold, topk_kl

RUNTIMES = {"onnx": "onnxruntime", "openvino": "openvino", "litert": "ai_edge_litert"}


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(params=sorted(RUNTIMES))
def tiny_bundle(request, bundle_factory):
    if importlib.util.find_spec(RUNTIMES[request.param]) is None:
        pytest.skip(f"needs {RUNTIMES[request.param]} (pip install 'edgeslm[{request.param}]')")
    return bundle_factory(request.param)


def rehash(bundle_dir):
    """Rewrite every file's sha256 in the manifest, as if the bundle had been made this way."""
    from edgeslm.bundle.manifest import hash_files

    mfile = bundle_dir / "manifest.json"
    manifest = json.loads(mfile.read_text())
    manifest["files"] = hash_files(bundle_dir)
    mfile.write_text(json.dumps(manifest, indent=2))


def tamper_embedding(bundle_dir, hf_folder) -> str:
    """Add noise to the token embedding wherever model files store it verbatim (float32): every
    such file (a LiteRT bundle's model.litertlm holds a copy of model.tflite); returns the first
    name in sorted order, the one the hash check reports."""
    from safetensors.numpy import load_file

    emb = load_file(hf_folder / "model.safetensors")["model.embed_tokens.weight"].astype(np.float32)
    noisy = emb + np.random.default_rng(0).normal(0.0, 0.2, emb.shape).astype(np.float32)
    names = []
    for f in sorted(bundle_dir.iterdir()):
        data = f.read_bytes()
        if f.suffix not in (".json", ".npz") and emb.tobytes() in data:
            f.write_bytes(data.replace(emb.tobytes(), noisy.tobytes()))
            names.append(f.name)
    if not names:
        raise AssertionError(f"the embedding is not stored verbatim in {bundle_dir}")
    return names[0]


@requires_export
def test_bundle_carries_a_small_hashed_reference(tiny_bundle):
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    info = manifest["parity_reference"]
    assert info["file"] == REFERENCE_FILE and REFERENCE_FILE in manifest["files"]
    assert manifest["files"][REFERENCE_FILE]["bytes"] < 64_000
    ref = load_reference_file(tiny_bundle / REFERENCE_FILE)
    assert ref["continuation"].shape == (info["prompts"], 8)  # bundle_factory: parity_tokens=8
    assert ref["topk_ids"].shape == (info["tokens"], info["top_k"])
    assert np.all(np.diff(ref["topk_logits"], axis=1) <= 0)  # descending
    # the source's greedy token is the top of its stored logits
    assert np.array_equal(ref["topk_ids"][:, 0], ref["continuation"].reshape(-1))
    assert info["min_top1_agreement"] == manifest["parity"]["min_top1_agreement"] == 1.0


@requires_export
def test_on_device_matches_the_export_measurement(tiny_bundle, capsys):
    code, out, err = run(["verify", str(tiny_bundle), "--on-device", "--json"], capsys)
    assert code == 0, err
    dev = json.loads(out)["on_device"]
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    # same engine, same machine: the replay reproduces what the export measured
    assert dev["top1_agreement"] == manifest["parity"]["top1_agreement"] == 1.0
    assert dev["passed"] and dev["tokens"] == manifest["parity"]["tokens"] == 24
    assert dev["kl_topk_mean"] < 1e-6 and dev["threshold_from"] == "exporter"
    assert dev["perplexity_device"] == pytest.approx(manifest["parity"]["perplexity_export"], rel=1e-3)
    code, out, _ = run(["verify", str(tiny_bundle), "--on-device"], capsys)
    assert code == 0 and "on-device parity passed: top-1 agreement 100.0% (24/24" in out


@requires_export
def test_tampered_weights_fail_on_device(tiny_bundle, tiny_hf, tmp_path, capsys):
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    name = tamper_embedding(b, tiny_hf)
    code, _, err = run(["verify", str(b)], capsys)  # the hashes catch it ...
    assert code == 1 and name in err and "sha256" in err
    rehash(b)  # ... until the manifest is rewritten to match
    code, out, _ = run(["verify", str(b)], capsys)
    assert code == 0 and out.startswith("ok:")
    code, out, err = run(["verify", str(b), "--on-device"], capsys)  # the behaviour does not lie
    assert code == 1
    assert "on-device parity FAILED" in out and err.startswith("error: ") and err.count("\n") == 1
    assert "< 100.0% (exporter)" in err
    code, out, _ = run(["verify", str(b), "--on-device", "--min-agreement", "0", "--json"], capsys)
    dev = json.loads(out)["on_device"]
    assert code == 0 and dev["top1_agreement"] < 0.9 and dev["kl_topk_mean"] > 1e-3
    assert dev["threshold_from"] == "--min-agreement"


@requires_export
def test_bundle_without_reference_and_misused_flag(onnx_bundle, tmp_path, capsys):
    b = tmp_path / "b"
    shutil.copytree(onnx_bundle, b)
    (b / REFERENCE_FILE).unlink()
    manifest = json.loads((b / "manifest.json").read_text())
    del manifest["parity_reference"], manifest["files"][REFERENCE_FILE]
    (b / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run(["verify", str(b), "--on-device"], capsys)
    assert code == 1 and "carries no parity reference" in err and err.count("\n") == 1
    code, _, err = run(["verify", str(b), "--min-agreement", "0.9"], capsys)
    assert code == 2 and "--on-device only" in err


@requires_export
@pytest.mark.parametrize("case", ["outside", "unlisted", "corrupt"])
def test_a_bad_reference_is_one_line(case, onnx_bundle, tmp_path, capsys):
    b = tmp_path / "b"
    shutil.copytree(onnx_bundle, b)
    manifest = json.loads((b / "manifest.json").read_text())
    if case == "outside":
        manifest["parity_reference"]["file"] = "../manifest.json"
    elif case == "unlisted":
        manifest["parity_reference"]["file"] = "tokenizer.jsonx"
    else:  # listed and hashed, but not an npz
        (b / REFERENCE_FILE).write_bytes(b"not a zip file")
    (b / "manifest.json").write_text(json.dumps(manifest))
    if case == "corrupt":
        rehash(b)
    code, _, err = run(["verify", str(b), "--on-device"], capsys)
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1, err
    assert ("must name a file listed" in err) if case != "corrupt" else ("not a valid parity reference" in err)


def test_topk_kl_is_a_close_lower_bound():
    rng = np.random.default_rng(1)
    src = rng.normal(0, 3, (6, 500))
    dev = src + rng.normal(0, 0.3, src.shape)
    k = 32
    ids = np.argsort(-src, axis=1)[:, :k]
    lse = np.log(np.exp(src).sum(1))
    ref = {"topk_ids": ids, "topk_logits": np.take_along_axis(src, ids, 1), "logsumexp": lse}
    approx, full = topk_kl(ref, slice(0, 6), dev), kl_divergence(src, dev)
    assert np.all(approx <= full + 1e-12) and np.all(approx > 0.5 * full)
    assert np.allclose(topk_kl(ref, slice(0, 6), src), 0.0, atol=1e-12)


def test_threshold_falls_back_to_the_export_measurement():
    class B:
        manifest = {"parity_reference": {"min_top1_agreement": None}, "parity": {"top1_agreement": 0.9}}

    assert threshold(B, None) == (pytest.approx(0.85), "export measurement - 0.05")
    assert threshold(B, 0.5) == (0.5, "--min-agreement")
    B.manifest["parity_reference"]["min_top1_agreement"] = 0.95
    assert threshold(B, None) == (0.95, "exporter")


@requires_export
def test_on_device_through_a_signed_private_copy(onnx_bundle, tmp_path, capsys):
    pytest.importorskip("cryptography")
    b = tmp_path / "b"
    shutil.copytree(onnx_bundle, b)
    assert run(["keys", "generate", str(tmp_path / "k")], capsys)[0] == 0
    assert run(["keys", "sign", str(b), "--key", str(tmp_path / "k.key")], capsys)[0] == 0
    code, out, err = run(["verify", str(b), "--key", str(tmp_path / "k.pub"), "--on-device", "--json"], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["signature"] == "ok" and res["on_device"]["passed"] and res["on_device"]["tokens"] == 24
