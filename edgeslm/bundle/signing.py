"""Ed25519 signatures over a bundle's manifest.json (which holds every file's sha256).

Signing the manifest's exact bytes signs the whole bundle: a changed model file no longer
matches its sha256 in the manifest, and a changed manifest no longer matches the signature.
``manifest.json.sig`` is a small JSON document::

    {"schema_version": 1, "algorithm": "ed25519", "key_id": "3f1c0a9e5b7d2c44",
     "signature": "<base64 of the 64-byte signature of manifest.json's bytes>"}

``key_id`` is the first 16 hex digits of sha256(raw 32-byte public key): it tells a device
which of its trusted keys to try, and people which key signed. Keys are PEM files (PKCS#8
private key, optionally encrypted; SubjectPublicKeyInfo public key), made by ``cryptography``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

from .._deps import require
from ..errors import SignatureError
from .manifest import MANIFEST_FILE, SIGNATURE_FILE, Bundle

SIGNATURE_SCHEMA_VERSION = 1
ALGORITHM = "ed25519"
#: environment variable read for the passphrase of an encrypted private key
PASSPHRASE_ENV = "EDGESLM_KEY_PASSPHRASE"


def _ed25519(purpose: str = "signing bundles"):
    require("cryptography", "sign", purpose)
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519


def _serialization():
    from cryptography.hazmat.primitives import serialization

    return serialization


def key_id(public_key: Any) -> str:
    """Short id of an Ed25519 public key: sha256 of its 32 raw bytes, 16 hex digits."""
    s = _serialization()
    raw = public_key.public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(private_path: str | Path, public_path: str | Path | None = None,
                     passphrase: bytes | None = None) -> tuple[Path, Path, str]:
    """Write a new private key (mode 0600) and its public key; refuses to overwrite. Returns paths and key id."""
    ed25519, s = _ed25519(), _serialization()
    private_path = Path(private_path)
    public_path = Path(public_path) if public_path else private_path.with_suffix(".pub")
    for p in (private_path, public_path):
        if p.exists():
            raise SignatureError(f"{p} exists; refusing to overwrite a key")
    key = ed25519.Ed25519PrivateKey.generate()
    enc = s.BestAvailableEncryption(passphrase) if passphrase else s.NoEncryption()
    pem = key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, enc)
    from ..outputs import make_dir

    make_dir(private_path.parent, "key folder")
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        public_path.write_bytes(key.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo))
    except OSError as exc:
        raise SignatureError(f"cannot write the key pair {private_path} / {public_path} ({exc.strerror or exc})") from None
    return private_path, public_path, key_id(key.public_key())


def load_private_key(source: Any, passphrase: bytes | None = None):
    """An Ed25519 private key from a PEM file (or the key object itself).

    An encrypted key takes ``passphrase`` or the ``EDGESLM_KEY_PASSPHRASE`` environment variable.
    """
    ed25519, s = _ed25519(), _serialization()
    if isinstance(source, ed25519.Ed25519PrivateKey):
        return source
    path = Path(source)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SignatureError(f"{path}: cannot read the private key ({exc})") from exc
    if passphrase is None and os.environ.get(PASSPHRASE_ENV):
        passphrase = os.environ[PASSPHRASE_ENV].encode()
    try:
        key = s.load_pem_private_key(data, password=passphrase)
    except TypeError as exc:  # encrypted without a passphrase, or a passphrase for a plain key
        raise SignatureError(f"{path}: {exc}; set {PASSPHRASE_ENV} for an encrypted key") from exc
    except ValueError as exc:
        raise SignatureError(f"{path}: not a PEM private key, or a wrong passphrase ({exc})") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SignatureError(f"{path}: a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_key(source: Any):
    """An Ed25519 public key from a PEM file, PEM bytes, a public key, or a private key (its public half)."""
    ed25519, s = _ed25519(), _serialization()
    if isinstance(source, ed25519.Ed25519PublicKey):
        return source
    if isinstance(source, ed25519.Ed25519PrivateKey):
        return source.public_key()
    if isinstance(source, (bytes, bytearray)):
        data, where = bytes(source), "<bytes>"
    else:
        where = str(source)
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise SignatureError(f"{where}: cannot read the public key ({exc})") from exc
    try:
        key = s.load_pem_public_key(data)
    except ValueError as exc:
        raise SignatureError(f"{where}: not a PEM public key ({exc}); pass the .pub file, not the private key") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise SignatureError(f"{where}: a {type(key).__name__}, not an Ed25519 public key")
    return key


def sign_bundle(bundle_dir: str | Path, private_key: Any) -> str:
    """Check the bundle's files, then write manifest.json.sig over manifest.json's bytes. Returns the key id."""
    bundle = Bundle.open(bundle_dir, verify=True)  # never sign a bundle whose files already differ
    key = load_private_key(private_key)
    manifest_bytes = bundle.manifest_bytes  # the bytes whose files were just checked
    kid = key_id(key.public_key())
    doc = {"schema_version": SIGNATURE_SCHEMA_VERSION, "algorithm": ALGORITHM, "key_id": kid,
           "signature": base64.b64encode(key.sign(manifest_bytes)).decode("ascii")}
    tmp = bundle.path / f".{SIGNATURE_FILE}.tmp"
    try:  # write then rename: a reader never sees half a signature
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        os.replace(tmp, bundle.path / SIGNATURE_FILE)
    except OSError as exc:
        raise SignatureError(f"{bundle.path}: cannot write {SIGNATURE_FILE} ({exc.strerror or exc})") from None
    return kid


#: a signature file is ~200 bytes; anything far larger is not one
MAX_SIGNATURE_BYTES = 64 << 10


def sign_and_verify(bundle_dir: str | Path, key_file: str | Path) -> str:
    """Sign ``bundle_dir`` with the private key in ``key_file``, then verify the signature just
    written against that key's public half; returns the key id. What `export --sign` does."""
    key = load_private_key(key_file)
    kid = sign_bundle(bundle_dir, key)
    verify_bundle_signature(bundle_dir, [key.public_key()])
    return kid


def read_signature(bundle_dir: str | Path) -> dict[str, Any]:
    """The parsed manifest.json.sig; SignatureError naming the file when absent or malformed."""
    return _parse_signature(Path(bundle_dir), _read_signature_bytes(Path(bundle_dir)))


def _read_signature_bytes(bundle_dir: Path) -> bytes:
    from .integrity import read_member

    try:
        return read_member(bundle_dir, SIGNATURE_FILE, MAX_SIGNATURE_BYTES)
    except FileNotFoundError:
        raise SignatureError(f"{bundle_dir}: the bundle is not signed (no {SIGNATURE_FILE}) but trusted keys "
                             f"were given; sign it with `edgeslm keys sign` or `edgeslm export --sign KEY`") from None


def _parse_signature(bundle_dir: Path, raw: bytes) -> dict[str, Any]:
    sig_file = bundle_dir / SIGNATURE_FILE
    try:
        doc = json.loads(raw.decode("utf-8"))
        version, algorithm = doc["schema_version"], doc["algorithm"]
        kid, signature = str(doc["key_id"]), base64.b64decode(doc["signature"], validate=True)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        reason = " ".join(str(exc).split())[:200]
        raise SignatureError(f"{sig_file}: file '{SIGNATURE_FILE}' is malformed ({type(exc).__name__}: {reason})") from None
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= SIGNATURE_SCHEMA_VERSION:
        raise SignatureError(f"{sig_file}: signature schema_version {version!r} is not one this edgeslm "
                             f"understands ({SIGNATURE_SCHEMA_VERSION}); upgrade edgeslm")
    if algorithm != ALGORITHM:
        raise SignatureError(f"{sig_file}: unsupported signature algorithm {algorithm!r} (expected {ALGORITHM})")
    return {"key_id": kid, "signature": signature}


def check_signature(bundle_dir: str | Path, manifest_bytes: bytes, trusted_keys: Iterable[Any]) -> tuple[str, bytes]:
    """Verify ``manifest_bytes`` (read once by the caller, who then parses the same bytes)
    against the bundle's signature by one of ``trusted_keys``. Returns (key id, signature file bytes)."""
    _ed25519("checking bundle signatures")  # names the extra when cryptography is absent
    from cryptography.exceptions import InvalidSignature

    if isinstance(trusted_keys, (str, Path, bytes, bytearray)) or hasattr(trusted_keys, "public_bytes"):
        trusted_keys = [trusted_keys]  # one key given where a list was expected: not its characters
    keys = [load_public_key(k) for k in trusted_keys]
    if not keys:
        raise SignatureError("no trusted keys given")
    bundle_dir = Path(bundle_dir)
    sig_raw = _read_signature_bytes(bundle_dir)
    sig = _parse_signature(bundle_dir, sig_raw)
    by_id = {key_id(k): k for k in keys}
    key = by_id.get(sig["key_id"])
    if key is None:
        raise SignatureError(f"{bundle_dir}: signed by key {sig['key_id'][:64]}, which is not among the trusted keys "
                             f"({', '.join(sorted(by_id))})")
    try:
        key.verify(sig["signature"], manifest_bytes)
    except InvalidSignature:
        raise SignatureError(f"{bundle_dir}: file '{MANIFEST_FILE}' does not match its signature by key "
                             f"{sig['key_id']} (the manifest or '{SIGNATURE_FILE}' was modified after signing)") from None
    return sig["key_id"], sig_raw


def verify_bundle_signature(bundle_dir: str | Path, trusted_keys: Iterable[Any]) -> str:
    """Raise SignatureError unless manifest.json carries a valid signature by one of ``trusted_keys``,
    then check every file against the manifest (BundleIntegrityError names a changed file).

    The signature is checked first, so a changed manifest is reported as such rather than as
    a mismatch of whatever file's hash the change happened to touch. Returns the key id.

    This is a check of the bundle as it is now. To *run* a signed bundle use
    ``edgeslm.load(path, trusted_keys=...)``, which verifies and loads one private copy, so no
    file can be swapped between the check and the load.
    """
    return Bundle.open(bundle_dir, verify=True, trusted_keys=trusted_keys, snapshot=False).key_id
