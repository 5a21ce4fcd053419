"""Fetching a bundle over HTTP(S) into a slot, resumable, checked against the signed manifest hash.

The bundle is a directory on any static HTTP server (``edgeslm fleet serve-artifacts``,
nginx, S3 ...): ``URL/manifest.json``, ``URL/manifest.json.sig`` and every file the manifest
lists. The manifest comes first and must hash to the ``manifest_sha256`` of the signed
command; it then names every other file's size and sha256, so nothing unsigned is ever
trusted and no file is read past its size. A file is written to ``NAME.part`` and resumed
with ``Range: bytes=N-`` after a dropped connection or a power loss; a server that ignores
Range (200 instead of 206) is read from the start again. A finished file is hashed and
renamed into place, so a present ``NAME`` is always a complete, checked file.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable
from urllib.parse import quote

from ...bundle.schema import MANIFEST_FILE, MAX_MANIFEST_BYTES, SIGNATURE_FILE, parse_manifest
from .command import CommandError

CHUNK = 256 * 1024  # small enough that a power loss can land inside a file of a tiny test bundle
TIMEOUT_S = 30.0


def _url(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + quote(name)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


class Downloader:
    """``fetch(base_url, slot_dir, manifest_sha256)``; ``progress(name, done, total)`` after each file."""

    def __init__(self, ca_file: str | None = None, retries: int = 5, backoff_s: float = 1.0,
                 on_chunk: Callable[[str, int], None] | None = None):
        self.context = ssl.create_default_context(cafile=ca_file) if ca_file else None
        self.retries = retries
        self.backoff_s = backoff_s
        self.on_chunk = on_chunk  # (file name, bytes so far): tests use it to pull the plug mid-file

    def fetch(self, base: str, slot: Path, manifest_sha256: str,
              progress: Callable[[str, int, int], None] | None = None) -> dict:
        """Download the whole bundle into ``slot``; return its parsed manifest. CommandError on a mismatch."""
        slot.mkdir(parents=True, exist_ok=True)
        mpath = slot / MANIFEST_FILE
        if not mpath.exists() or _sha256(mpath) != manifest_sha256:
            self._file(_url(base, MANIFEST_FILE), mpath, MAX_MANIFEST_BYTES, None)
            if _sha256(mpath) != manifest_sha256:
                mpath.unlink()
                raise CommandError("hash", "the manifest on the server does not match the signed command's hash")
        manifest = parse_manifest(mpath.read_bytes(), str(mpath))
        sig = slot / SIGNATURE_FILE
        if not sig.exists():
            self._file(_url(base, SIGNATURE_FILE), sig, 64 << 10, None, optional=True)
        files = manifest["files"]
        for i, (name, info) in enumerate(files.items()):
            dst = slot / name
            if not (dst.exists() and dst.stat().st_size == info["bytes"]):
                dst.parent.mkdir(parents=True, exist_ok=True)
                self._file(_url(base, name), dst, info["bytes"], info["sha256"])
            if progress:
                progress(name, i + 1, len(files))
        return manifest

    def _file(self, url: str, dst: Path, size: int, sha256: str | None, optional: bool = False) -> None:
        """``url`` -> ``dst`` via ``dst.part`` (resumed); exactly ``size`` bytes when ``sha256`` is known."""
        part = dst.with_name(dst.name + ".part")
        for attempt in range(self.retries):
            try:
                if self._get(url, part, size if sha256 else None, size):
                    break
            except urllib.error.HTTPError as exc:
                if exc.code == 404 and optional:
                    return
                if exc.code == 416:  # asked beyond the end: the .part is stale; start over
                    part.unlink(missing_ok=True)
                elif 400 <= exc.code < 500:
                    raise CommandError("download", f"{url}: HTTP {exc.code}") from None
            except (OSError, urllib.error.URLError) as exc:
                if attempt == self.retries - 1:
                    raise CommandError("download", f"{url}: {getattr(exc, 'reason', exc)}") from None
            time.sleep(self.backoff_s * 2 ** attempt)
        else:
            raise CommandError("download", f"{url}: incomplete after {self.retries} attempts")
        if sha256 is not None:
            if part.stat().st_size != size or _sha256(part) != sha256:
                part.unlink()
                raise CommandError("hash", f"{dst.name} does not match its sha256 in the signed manifest")
        with open(part, "rb") as f:
            os.fsync(f.fileno())
        os.replace(part, dst)

    def _get(self, url: str, part: Path, exact: int | None, limit: int) -> bool:
        """One request; True when the file is complete (``exact`` bytes, or the body ended)."""
        have = part.stat().st_size if part.exists() else 0
        if exact is not None and have >= exact:
            return True
        req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        with urllib.request.urlopen(req, timeout=TIMEOUT_S, context=self.context) as resp:
            if have and resp.status != 206:  # the server ignored Range: from the start
                have = 0
            with open(part, "r+b" if have else "wb") as out:
                out.seek(have)
                out.truncate()
                while True:
                    block = resp.read(min(CHUNK, limit - have + 1))
                    if not block:
                        break
                    have += len(block)
                    if have > limit:
                        raise CommandError("download", f"{url}: larger than the {limit:,} bytes the manifest says")
                    out.write(block)
                    if self.on_chunk:
                        out.flush()
                        self.on_chunk(part.name, have)
        return exact is None or have >= exact
