"""Can anyone but this user change a bundle's files? Decides whether a signed load must copy.

A file swapped between the hash check and the engine's open can only be swapped by someone who
can write it. When the bundle folder, every folder above it, and every file and folder in it
belong to this user (or root) and are writable by nobody else, and the filesystem is local,
nobody but this user can do that, and the files are loaded where they are. Otherwise (a shared
or world-writable folder, files owned by another user, a network or FUSE filesystem, a platform
where this cannot be checked) the signed load copies them to a private folder first, as
:mod:`edgeslm.bundle.integrity` describes. The same rule OpenSSH applies to authorized_keys.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

#: filesystems whose contents another machine (server, host, peer) can change under us
REMOTE_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "virtiofs", "ceph", "glusterfs",
                      "afs", "davfs", "lustre", "gpfs", "beegfs", "fuse")


def why_not_private(root: Path, names) -> str | None:
    """None when only this user or root can change ``root`` and the listed ``names``; else why not."""
    if os.name != "posix" or not hasattr(os, "geteuid") or not os.path.exists("/proc/self/mountinfo"):
        return "ownership cannot be checked on this platform"  # conservative: copy
    real = Path(os.path.realpath(root))
    fs = filesystem_type(real)
    if fs is None or fs.split(".")[0] in REMOTE_FILESYSTEMS:
        return f"it is on a {fs or 'unknown'} filesystem"
    trusted = {0, os.geteuid()}
    for folder in (real, *real.parents):  # every folder above: no one else may rename our way in
        why = _owned(folder, trusted, sticky_ok=folder != real)
        if why:
            return why
    inner = {real / n for n in names} | {real / p for n in names for p in _parents(n)}
    for path in sorted(inner):
        why = _owned(path, trusted, sticky_ok=False)
        if why:
            return why
    return None


def _parents(name: str):
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _owned(path: Path, trusted: set[int], sticky_ok: bool) -> str | None:
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if st.st_uid not in trusted:
        return f"{path} belongs to uid {st.st_uid}"
    if st.st_mode & 0o022 and not (sticky_ok and stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX):
        return f"{path} is writable by other users"
    return None


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem holding ``path`` (Linux: /proc/self/mountinfo), or None."""
    best, fstype = "", None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) < 5 or not right:
                    continue
                mount = fields[4].replace("\\040", " ")
                inside = str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, fstype = mount, right.split()[0]
    except OSError:
        return None
    return fstype
