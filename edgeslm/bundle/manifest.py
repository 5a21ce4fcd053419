"""Reading, writing and checking bundle manifests (schema documented in docs/bundle.md)."""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import BundleError, BundleIntegrityError, SchemaVersionError
from ..spec import ModelSpec
from ..sources.base import sha256_file

MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.json.sig"
SCHEMA_VERSION = 1
#: files that describe the bundle rather than belong to it
_NOT_HASHED = {MANIFEST_FILE, SIGNATURE_FILE}


def hash_files(directory: Path) -> dict[str, dict[str, Any]]:
    """{relative posix path: {sha256, bytes}} for every file under ``directory``."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if rel in _NOT_HASHED:
            continue
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
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return manifest


@dataclass
class Bundle:
    path: Path
    manifest: dict[str, Any]

    @property
    def format(self) -> str:
        return self.manifest["format"]

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec.from_dict(self.manifest["spec"])

    @property
    def bytes(self) -> int:
        return sum(f["bytes"] for f in self.manifest["files"].values())

    def file(self, name: str) -> Path:
        return self.path / name

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> "Bundle":
        path = Path(path)
        mfile = path / MANIFEST_FILE
        if not path.is_dir():
            raise BundleError(f"{path}: not a bundle directory")
        if not mfile.is_file():
            raise BundleError(f"{path}: no {MANIFEST_FILE}; is this an edgeslm bundle?")
        try:
            manifest = json.loads(mfile.read_text())
        except ValueError as exc:
            raise BundleError(f"{mfile}: not valid JSON ({exc})") from exc
        version = manifest.get("schema_version")
        if not isinstance(version, int):
            raise BundleError(f"{mfile}: no schema_version")
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{mfile}: schema_version {version} is newer than this edgeslm understands "
                f"({SCHEMA_VERSION}); upgrade edgeslm")
        for key in ("format", "spec", "files"):
            if key not in manifest:
                raise BundleError(f"{mfile}: missing '{key}'")
        bundle = cls(path=path, manifest=manifest)
        if verify:
            bundle.verify_files()
        return bundle

    def verify_files(self) -> None:
        """Raise BundleIntegrityError naming the first file whose bytes differ from the manifest."""
        for name, info in self.manifest["files"].items():
            f = self.path / name
            if not f.is_file():
                raise BundleIntegrityError(f"{self.path}: file '{name}' listed in the manifest is missing")
            if f.stat().st_size != info["bytes"] or sha256_file(f) != info["sha256"]:
                raise BundleIntegrityError(
                    f"{self.path}: file '{name}' does not match its sha256 in the manifest (modified or corrupt)")
        listed = set(self.manifest["files"])
        extra = [p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()]
        extra = [e for e in extra if e not in listed and e not in _NOT_HASHED]
        if extra:
            raise BundleIntegrityError(f"{self.path}: file '{extra[0]}' is not listed in the manifest")

    def load_tokenizer(self):
        from ..tokenizer import Tokenizer

        return Tokenizer.load(self.path)
