"""Checking a bundle's files against its manifest, in place or while copying them to a private folder.

In place (:func:`verify_in_place`) every listed file is opened without following links and
hashed; that proves the bundle is intact *now*, but the engine opens the files again later by
name, so whoever can write the bundle directory could swap a file in between. When the bundle
is signed and someone else could write it (:mod:`edgeslm.bundle.privacy`) that gap matters,
so the load uses :func:`copy_verified`: each listed file is read once, hashed and written to a
fresh private folder (``mkdtemp``, mode 0700) in the same pass, and the engine loads that copy. What runs is then exactly what was
hashed, and what was hashed is what the verified manifest bytes name. ``EDGESLM_SNAPSHOT_DIR``
chooses where the copies go (default: the system temp folder).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

from ..errors import BundleError, BundleIntegrityError
from .paths import open_member, walk
from .schema import MANIFEST_FILE, MAX_MANIFEST_BYTES, SIGNATURE_FILE

SNAPSHOT_DIR_ENV = "EDGESLM_SNAPSHOT_DIR"
_CHUNK = 4 << 20
_NOT_HASHED = {MANIFEST_FILE, SIGNATURE_FILE}


def read_member(root: Path, name: str, limit: int) -> bytes:
    """The bytes of a small bundle file (manifest, signature), read once through one descriptor."""
    try:
        fd = open_member(root, name)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise BundleError(f"{root}: cannot read '{name}' ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise BundleError(f"{root}: '{name}' is larger than {limit:,} bytes")
    return data


def read_manifest(root: Path) -> bytes:
    try:
        return read_member(root, MANIFEST_FILE, MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise BundleError(f"{root}: no {MANIFEST_FILE}; is this an edgeslm bundle?") from None


def verify_in_place(root: Path, files: dict[str, dict[str, Any]]) -> None:
    """BundleIntegrityError naming the first listed file that is missing or differs, or an unlisted file."""
    for name, info in files.items():
        fd = _open_listed(root, name)
        with os.fdopen(fd, "rb") as src:
            _check_size(root, name, info, src.fileno())
            h = hashlib.sha256()
            while block := src.read(_CHUNK):
                h.update(block)
        _check_digest(root, name, info, h.hexdigest())
    check_unlisted(root, files)


def copy_verified(root: Path, files: dict[str, dict[str, Any]], extra: dict[str, bytes],
                  parent: str | Path | None = None) -> Path:
    """Copy every listed file into a new private folder, hashing each byte as it is copied.

    ``extra`` maps names to bytes written as they are (the manifest and signature exactly as
    verified). Returns the folder; the caller removes it. Any mismatch removes it and raises.
    """
    tmp = Path(tempfile.mkdtemp(prefix="edgeslm-bundle-", dir=_snapshot_parent(parent)))
    try:
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        for name, info in files.items():
            fd = _open_listed(root, name)
            with os.fdopen(fd, "rb", buffering=0) as src:
                _check_size(root, name, info, src.fileno())
                digest = _copy_hashing(src, tmp / name, view, info["bytes"])
            _check_digest(root, name, info, digest)
        check_unlisted(root, files)
        for name, data in extra.items():
            (tmp / name).write_bytes(data)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def _copy_hashing(src, dst: Path, view: memoryview, expected: int) -> str:
    dst.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    h, total = hashlib.sha256(), 0
    out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
    try:
        while total <= expected:  # a file that grows past its size cannot match; stop reading it
            n = src.readinto(view)
            if not n:
                break
            h.update(view[:n])
            _write_all(out, view[:n])
            total += n
    finally:
        os.close(out)
    return h.hexdigest() if total == expected else ""


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data):]


def check_unlisted(root: Path, files: dict[str, Any]) -> None:
    for name in walk(root):  # also refuses links and special files anywhere in the tree
        if name not in files and name not in _NOT_HASHED:
            raise BundleIntegrityError(f"{root}: file '{name}' is not listed in the manifest")


def _open_listed(root: Path, name: str) -> int:
    try:
        return open_member(root, name)
    except FileNotFoundError:
        raise BundleIntegrityError(f"{root}: file '{name}' listed in the manifest is missing") from None
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            raise BundleIntegrityError(f"{root}: file '{name}' listed in the manifest is missing") from None
        raise BundleError(f"{root}: cannot read '{name}' ({exc.strerror})") from None


def _check_size(root: Path, name: str, info: dict[str, Any], fd: int) -> None:
    size = os.fstat(fd).st_size
    if size != info["bytes"]:
        raise BundleIntegrityError(f"{root}: file '{name}' does not match its sha256 in the manifest "
                                   f"(modified or corrupt: {size:,} bytes, manifest says "
                                   f"{info['bytes']:,})")


def _check_digest(root: Path, name: str, info: dict[str, Any], digest: str) -> None:
    if digest != info["sha256"]:
        raise BundleIntegrityError(f"{root}: file '{name}' does not match its sha256 in the manifest "
                                   f"(modified or corrupt)")


def _snapshot_parent(parent: str | Path | None) -> str | None:
    """Where private copies go; refuses a folder others could rename our copy out of."""
    parent = parent or os.environ.get(SNAPSHOT_DIR_ENV) or None
    if parent is None:
        return None  # tempfile's choice: /tmp and the like are sticky
    try:
        st = os.stat(parent)
    except OSError as exc:
        raise BundleError(f"{SNAPSHOT_DIR_ENV}={parent}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise BundleError(f"{SNAPSHOT_DIR_ENV}={parent}: not a directory")
    if os.name == "posix" and st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise BundleError(f"{SNAPSHOT_DIR_ENV}={parent}: writable by others and not sticky; "
                          f"choose a private folder for verified copies")
    return str(parent)
