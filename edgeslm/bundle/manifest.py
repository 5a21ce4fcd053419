"""Reading, writing and checking bundle manifests (schema documented in docs/bundle.md)."""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import BundleError
from ..sources.base import sha256_file
from ..spec import ModelSpec
from .integrity import copy_verified, read_manifest, verify_in_place
from .paths import check_name, walk
from .schema import MANIFEST_FILE, SCHEMA_VERSION, SIGNATURE_FILE, parse_manifest

__all__ = ["MANIFEST_FILE", "SCHEMA_VERSION", "SIGNATURE_FILE", "Bundle", "hash_files", "write_manifest"]
#: files that describe the bundle rather than belong to it
_NOT_HASHED = {MANIFEST_FILE, SIGNATURE_FILE}


def hash_files(directory: Path) -> dict[str, dict[str, Any]]:
    """{relative posix path: {sha256, bytes}} for every file under ``directory`` (links refused)."""
    out: dict[str, dict[str, Any]] = {}
    for rel in sorted(walk(directory)):
        if rel in _NOT_HASHED:
            continue
        path = directory / check_name(rel)
        out[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return out


def write_manifest(directory: str | Path, fields: dict[str, Any]) -> dict[str, Any]:
    """Hash every file in ``directory`` and write manifest.json with ``fields`` added."""
    directory = Path(directory)
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "edgeslm_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    manifest.update(fields)
    manifest["files"] = hash_files(directory)
    save_manifest(directory, manifest)
    return manifest


def save_manifest(directory: str | Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` as it is (no re-hashing): for a writer that has updated what it wrote."""
    (Path(directory) / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")


@dataclass
class Bundle:
    """An opened bundle. ``path`` is where its files are read from: the bundle directory
    itself, or a private verified copy of it (``snapshot``); ``source`` is always the directory
    the caller named. ``manifest_bytes`` are the exact bytes parsed (and signature-checked)."""

    path: Path
    manifest: dict[str, Any]
    source: Path | None = None
    manifest_bytes: bytes = field(default=b"", repr=False)
    key_id: str | None = None  # the trusted key whose signature was verified, if any
    snapshot_reason: str | None = None  # why a signed load copied the files (others could change them)
    _cleanup: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.source is None:
            self.source = self.path

    @property
    def format(self) -> str:
        return self.manifest["format"]

    @property
    def spec(self) -> ModelSpec:
        try:
            return ModelSpec.from_dict(self.manifest["spec"])
        except (KeyError, TypeError, ValueError) as exc:  # only for a manifest built in code
            raise BundleError(f"{self.source}: 'spec' is not a valid model spec ({exc})") from None

    @property
    def bytes(self) -> int:
        return sum(f["bytes"] for f in self.manifest["files"].values())

    @property
    def snapshot(self) -> bool:
        """True when the files are read from a private verified copy."""
        return self.path != self.source

    def file(self, name: str) -> Path:
        """The path of bundle member ``name``; refuses names that could leave the bundle."""
        return self.path / check_name(name)

    def artifact(self, key: str = "model") -> Path:
        """Path of ``artifacts[key]`` (validated when the manifest was read: inside the bundle,
        listed in ``files``, so hashed). Engines open model files only through this."""
        art = self.manifest.get("artifacts")
        if not isinstance(art, dict) or key not in art:
            raise BundleError(f"{self.source}: the manifest has no 'artifacts.{key}'")
        return self.file(check_name(art[key], f"artifacts.{key}"))

    @classmethod
    def open(cls, path: str | Path, verify: bool = True, trusted_keys=None, snapshot: bool | None = None,
             snapshot_dir: str | Path | None = None) -> "Bundle":
        """Read the manifest once and check it; with ``trusted_keys`` check its signature over
        those same bytes; then check every file (``verify``, always with keys).

        ``snapshot=True`` copies the files into a private folder while hashing them, so what the
        engine loads is exactly what was verified; :meth:`close` removes the copy. The default
        (None) copies when keys are given and someone other than this user could change the
        files (:mod:`edgeslm.bundle.privacy`); ``snapshot_reason`` then says why.
        """
        root = Path(path)
        if not root.is_dir():
            raise BundleError(f"{root}: not a bundle directory")
        raw = read_manifest(root)
        key_id, sig_raw = None, None
        if trusted_keys is not None:
            from .signing import check_signature

            key_id, sig_raw = check_signature(root, raw, trusted_keys)
        manifest = parse_manifest(raw, str(root / MANIFEST_FILE))
        bundle = cls(path=root, manifest=manifest, source=root, manifest_bytes=raw, key_id=key_id)
        if snapshot is None and trusted_keys is not None:
            from .privacy import why_not_private

            bundle.snapshot_reason = why_not_private(root, manifest["files"])
            snapshot = bundle.snapshot_reason is not None
        if snapshot:
            extra = {MANIFEST_FILE: raw, **({SIGNATURE_FILE: sig_raw} if sig_raw is not None else {})}
            bundle.path = copy_verified(root, manifest["files"], extra, snapshot_dir)
            bundle._cleanup = weakref.finalize(bundle, shutil.rmtree, str(bundle.path), True)
        elif verify or trusted_keys is not None:
            bundle.verify_files()
        return bundle

    def verify_files(self) -> None:
        """Raise BundleIntegrityError naming the first file whose bytes differ from the manifest."""
        verify_in_place(self.path, self.manifest["files"])

    def load_tokenizer(self):
        from ..tokenizer import Tokenizer

        return Tokenizer.load(self.path)

    def close(self) -> None:
        """Remove the private copy, if any (also done when the Bundle is garbage collected)."""
        if self._cleanup is not None:
            self._cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
