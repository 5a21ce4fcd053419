"""Bundle paths that leave the bundle, symbolic links, special files, and the verify/load race.

Hand-made bundles (no model needed) check the refusals; the tiny ONNX bundle checks that the
engine never loads anything but the verified bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import edgeslm
from edgeslm.bundle import Bundle, write_manifest
from edgeslm.bundle.paths import check_name
from edgeslm.cli import main
from edgeslm.errors import BundleError, BundleIntegrityError, EdgeSLMError
from edgeslm.testing import requires_export

SPEC = {"architecture": "llama", "vocab_size": 320, "hidden_size": 64, "num_layers": 2, "num_heads": 4,
        "num_kv_heads": 2, "head_dim": 16, "intermediate_size": 128, "context_length": 256}
BAD_NAMES = ["../x", "../../etc/passwd", "a/../../x", "a/../x", "/etc/passwd", "//server/share/x", "C:/x", "c:x",
             "a\\..\\..\\x", "..\\x", "./x", "a/./b", "a//b", "a/", "", ".", "..", "x\x00y", "x\ny"]


def make_bundle(root: Path, contents: dict[str, bytes] | None = None, **fields) -> Path:
    """A bundle with real hashes; ``fields`` override manifest fields after hashing."""
    root.mkdir(parents=True, exist_ok=True)
    for name, data in (contents or {"model.onnx": b"graph", "tokenizer.json": b"{}"}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    m = write_manifest(root, {"format": "onnx", "spec": SPEC, "artifacts": {"model": "model.onnx"}})
    m.update(fields)
    (root / "manifest.json").write_text(json.dumps(m))
    return root


def entry(data: bytes) -> dict:
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("name", BAD_NAMES)
def test_check_name_refuses_everything_but_plain_relative_paths(name):
    with pytest.raises(BundleError, match="refused|must be a string"):
        check_name(name)


@pytest.mark.parametrize("name", ["model.onnx", "a/b/c.bin", "model.mlpackage/Data/weight.bin", "ü-ñame.json"])
def test_check_name_accepts_plain_paths(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_in_files_artifacts_and_tokenizer_are_refused(tmp_path, name):
    outside = b"weights from elsewhere"
    cases = {
        "files": {"files": {"model.onnx": entry(b"graph"), "tokenizer.json": entry(b"{}"), name: entry(outside)}},
        "artifacts.model": {"artifacts": {"model": name}},
        "artifacts.weights": {"artifacts": {"model": "model.onnx", "weights": name}},
        "artifacts.files": {"artifacts": {"model": "model.onnx", "files": ["model.onnx", name]}},
        "tokenizer.files": {"tokenizer": {"files": ["tokenizer.json", name]}},
    }
    for i, (field, override) in enumerate(cases.items()):
        root = make_bundle(tmp_path / f"b{i}", **override)
        with pytest.raises(BundleError, match=f"'{field}'") as exc:
            Bundle.open(root, verify=False)
        assert "\n" not in str(exc.value)


def test_artifact_must_be_a_listed_file(tmp_path):
    root = make_bundle(tmp_path / "b", contents={"model.onnx": b"g", "tokenizer.json": b"{}"},
                       artifacts={"model": "other.onnx"})
    (root / "other.onnx").write_bytes(b"unhashed")  # present but not listed: never loadable
    with pytest.raises(BundleError, match="'artifacts.model' names 'other.onnx', which is not listed"):
        Bundle.open(root)


def test_coreml_style_artifact_folder_is_accepted(tmp_path):
    root = make_bundle(tmp_path / "b", contents={"m.mlpackage/Manifest.json": b"{}", "m.mlpackage/Data/w.bin": b"w"},
                       artifacts={"model": "m.mlpackage", "files": ["m.mlpackage"]})
    b = Bundle.open(root)
    assert b.artifact("model") == root / "m.mlpackage"


@requires_export
@pytest.mark.parametrize("how", ["relative", "absolute"])
def test_model_outside_the_bundle_is_never_loaded(onnx_bundle, tmp_path, capsys, how):
    """The attack found on main: list ../outside/model.onnx (with its true hash) and point
    artifacts.model at it; verify said ok and the engine loaded the outside file."""
    outside, b = tmp_path / "outside", tmp_path / "b"
    shutil.copytree(onnx_bundle, b)
    outside.mkdir()
    for f in ("model.onnx", "model.onnx.data"):
        shutil.move(b / f, outside / f)
    m = json.loads((b / "manifest.json").read_text())
    ref = "../outside/model.onnx" if how == "relative" else str(outside / "model.onnx")
    data_ref = ref + ".data"
    m["files"][ref] = m["files"].pop("model.onnx")
    m["files"][data_ref] = m["files"].pop("model.onnx.data")
    m["artifacts"] = {"model": ref, "files": [ref, data_ref]}
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="refused"):
        edgeslm.load(b)
    code, out, err = run(["verify", str(b)], capsys)
    assert code == 1 and not out and err.startswith("error: ") and err.count("\n") == 1 and "refused" in err


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges on Windows")
def test_symlinks_are_refused_listed_or_not(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"graph")  # same bytes as the listed file: a hash check alone would pass
    # 1. a listed file that is a link to a file outside
    b1 = make_bundle(tmp_path / "b1")
    (b1 / "model.onnx").unlink()
    (b1 / "model.onnx").symlink_to(secret)
    with pytest.raises(BundleError, match="'model.onnx'.*(symbolic link|not a regular)"):
        Bundle.open(b1)
    # 2. a listed file under a linked folder
    real = tmp_path / "realdir"
    real.mkdir()
    (real / "w.bin").write_bytes(b"w")
    b2 = make_bundle(tmp_path / "b2", contents={"model.onnx": b"graph", "tokenizer.json": b"{}", "sub/w.bin": b"w"})
    shutil.rmtree(b2 / "sub")
    (b2 / "sub").symlink_to(real, target_is_directory=True)
    with pytest.raises(BundleError, match="'sub' is a symbolic link"):
        Bundle.open(b2)
    # 3. an unlisted linked folder (files under it are outside the bundle): refused too
    b3 = make_bundle(tmp_path / "b3")
    (b3 / "extra").symlink_to(tmp_path / "realdir", target_is_directory=True)
    with pytest.raises(BundleError, match="'extra' is a symbolic link"):
        Bundle.open(b3)
    # 4. a link that stays inside the bundle is refused as well: bundles hold plain files
    b4 = make_bundle(tmp_path / "b4")
    (b4 / "alias.onnx").symlink_to(b4 / "model.onnx")
    with pytest.raises(BundleError, match="'alias.onnx' is a symbolic link"):
        Bundle.open(b4)
    # 5. manifest.json itself a link
    b5 = make_bundle(tmp_path / "b5")
    (tmp_path / "m.json").write_bytes((b5 / "manifest.json").read_bytes())
    (b5 / "manifest.json").unlink()
    (b5 / "manifest.json").symlink_to(tmp_path / "m.json")
    with pytest.raises(BundleError, match="manifest.json"):
        Bundle.open(b5, verify=False)
    # the bundle directory itself may be reached through a link
    (tmp_path / "link-to-b4").symlink_to(make_bundle(tmp_path / "b6"), target_is_directory=True)
    assert Bundle.open(tmp_path / "link-to-b4").format == "onnx"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_in_place_of_a_file_is_refused_without_blocking(tmp_path):
    b = make_bundle(tmp_path / "b")
    (b / "model.onnx").unlink()
    os.mkfifo(b / "model.onnx")  # opening it for reading would wait for a writer forever
    with pytest.raises(BundleError, match="'model.onnx' is not a regular file"):
        Bundle.open(b)
    with pytest.raises(BundleError, match="'model.onnx' is not a regular file"):
        Bundle.open(b, snapshot=True)


def test_snapshot_copies_exactly_the_listed_files_privately(tmp_path, monkeypatch):
    snaps = tmp_path / "snaps"
    snaps.mkdir(mode=0o700)
    monkeypatch.setenv("EDGESLM_SNAPSHOT_DIR", str(snaps))
    b = make_bundle(tmp_path / "b", contents={"model.onnx": b"graph", "tokenizer.json": b"{}", "d/w.bin": b"w" * 100})
    with Bundle.open(b, snapshot=True) as bundle:
        copy = bundle.path
        assert copy.parent == snaps and bundle.source == b and bundle.snapshot
        assert (os.stat(copy).st_mode & 0o777) == 0o700
        assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()) == \
            ["d/w.bin", "manifest.json", "model.onnx", "tokenizer.json"]
        assert (copy / "manifest.json").read_bytes() == (b / "manifest.json").read_bytes()
        (b / "model.onnx").write_bytes(b"GRAPH")  # changing the source later does not touch the copy
        assert bundle.artifact("model").read_bytes() == b"graph"
    assert not copy.exists() and not any(snaps.iterdir())
    (b / "model.onnx").write_bytes(b"graphX")
    with pytest.raises(BundleIntegrityError, match="'model.onnx'"):
        Bundle.open(b, snapshot=True)
    assert not any(snaps.iterdir())  # a failed copy leaves nothing behind


def test_snapshot_dir_writable_by_others_is_refused(tmp_path, monkeypatch):
    b = make_bundle(tmp_path / "b")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # no sticky bit: another user could rename our copy and plant theirs
    monkeypatch.setenv("EDGESLM_SNAPSHOT_DIR", str(shared))
    with pytest.raises(BundleError, match="writable by others and not sticky"):
        Bundle.open(b, snapshot=True)
    shared.chmod(0o700)
    with Bundle.open(b, snapshot=True) as bundle:
        assert bundle.path.parent == shared


# -- the race: files swapped after the signature and hash checks ---------------------------
@pytest.fixture
def signed(onnx_bundle, tmp_path):
    pytest.importorskip("cryptography")
    from edgeslm.bundle.signing import generate_keypair, sign_bundle

    priv, pub, _ = generate_keypair(tmp_path / "keys" / "k.key")
    out = tmp_path / "signed"
    shutil.copytree(onnx_bundle, out)
    sign_bundle(out, priv)
    out.chmod(0o777)  # a shared folder: other users could swap files, so a signed load must copy
    return out, pub


def _plant_attackers_bundle(root: Path) -> None:
    """What an attacker with write access to the bundle folder swaps in: different weights and
    a manifest whose hashes match them (unsigned, so the signature no longer covers it)."""
    data = root / "model.onnx.data"
    tmp = root / ".swap"
    tmp.write_bytes(bytes(data.stat().st_size))  # all-zero weights: different logits
    os.replace(tmp, data)  # an atomic rename, as a careful attacker would do
    m = json.loads((root / "manifest.json").read_text())
    m["files"]["model.onnx.data"] = entry(data.read_bytes())
    (root / "manifest.json").write_text(json.dumps(m))


def _first_logits(model) -> np.ndarray:
    model.engine.reset()
    return model.engine.prefill([5, 6, 7])


@requires_export
def test_files_swapped_between_verification_and_engine_load_are_not_loaded(signed, monkeypatch):
    root, pub = signed
    with edgeslm.load(root, trusted_keys=[pub]) as model:
        expected = _first_logits(model)
    import edgeslm.runtime.model as model_mod

    real_get_engine = model_mod.get_engine

    def swap_then_get_engine(fmt):  # runs after every check, just before the engine opens files
        _plant_attackers_bundle(root)
        return real_get_engine(fmt)

    monkeypatch.setattr(model_mod, "get_engine", swap_then_get_engine)
    with edgeslm.load(root, trusted_keys=[pub]) as model:
        np.testing.assert_array_equal(_first_logits(model), expected)  # the verified weights ran
        assert model.bundle.snapshot and "writable by other users" in model.bundle.snapshot_reason
    monkeypatch.setattr(model_mod, "get_engine", real_get_engine)
    with pytest.raises(EdgeSLMError, match="manifest.json"):  # and the swapped bundle itself is refused
        edgeslm.load(root, trusted_keys=[pub])


@requires_export
def test_manifest_swapped_right_after_the_signature_check_is_not_used(signed, monkeypatch):
    """The signature is checked over the bytes that are parsed: a manifest swapped after the
    check (with files to match) is never read, and the swapped files fail the verified hashes."""
    import edgeslm.bundle.signing as signing

    root, pub = signed
    real_check = signing.check_signature

    def check_then_swap(*args, **kwargs):
        result = real_check(*args, **kwargs)
        _plant_attackers_bundle(root)
        return result

    monkeypatch.setattr(signing, "check_signature", check_then_swap)
    with pytest.raises(BundleIntegrityError, match="'model.onnx.data' does not match"):
        edgeslm.load(root, trusted_keys=[pub])


@requires_export
def test_signed_load_copies_only_when_someone_else_could_write(signed):
    """In place when only this user (or root) can change the files; copied otherwise."""
    root, pub = signed  # mode 0777: shared
    with Bundle.open(root, trusted_keys=[pub]) as b:
        assert b.snapshot and b.snapshot_reason == f"{root} is writable by other users"
    root.chmod(0o700)
    with Bundle.open(root, trusted_keys=[pub]) as b:
        assert not b.snapshot and b.path == root and b.snapshot_reason is None
    (root / "model.onnx.data").chmod(0o666)  # one file writable by anyone
    with Bundle.open(root, trusted_keys=[pub]) as b:
        assert b.snapshot and "model.onnx.data is writable by other users" in b.snapshot_reason
    (root / "model.onnx.data").chmod(0o644)
    if os.geteuid() == 0:  # a file owned by another user: they could rewrite it
        os.chown(root / "tokenizer.json", 65534, -1)
        with Bundle.open(root, trusted_keys=[pub]) as b:
            assert b.snapshot and "tokenizer.json belongs to uid 65534" in b.snapshot_reason
    with Bundle.open(root, trusted_keys=[pub], snapshot=True) as b:  # always copy when asked
        assert b.snapshot


def test_bundles_on_network_filesystems_count_as_shared(tmp_path, monkeypatch):
    import edgeslm.bundle.privacy as privacy

    b = make_bundle(tmp_path / "b")
    b.chmod(0o700)
    assert privacy.why_not_private(b, ["model.onnx"]) is None
    assert privacy.filesystem_type(Path("/proc")) == "proc"
    monkeypatch.setattr(privacy, "filesystem_type", lambda path: "nfs4")  # the server can change files
    assert privacy.why_not_private(b, ["model.onnx"]) == "it is on a nfs4 filesystem"
    monkeypatch.setattr(privacy, "filesystem_type", lambda path: "fuse.sshfs")
    assert privacy.why_not_private(b, ["model.onnx"]) == "it is on a fuse.sshfs filesystem"
