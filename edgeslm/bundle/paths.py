"""The one place that decides whether a name from a manifest may be opened inside a bundle.

A manifest is input: ``files`` keys, ``artifacts.model`` and the other artifact paths come from
whoever wrote the bundle. Every such name goes through :func:`check_name` (a plain relative
POSIX path: no ``..``, no absolute path, no drive letter, no backslash, no empty or ``.``
component, no NUL), and every file is opened through :func:`open_member`, which walks the
path one component at a time without following symbolic links and accepts only a regular
file at the end. :func:`walk` lists a bundle's tree the same way and refuses any symlink or
special file in it, so nothing outside the bundle directory is ever read through a bundle.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path
from typing import Iterator

from ..errors import BundleError

#: longest accepted name (bytes of UTF-8) and component, as common filesystems allow
MAX_NAME_BYTES = 4096
MAX_COMPONENT_BYTES = 255
_DRIVE = re.compile(r"^[A-Za-z]:")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO planted in a bundle must not block the open
_BINARY = getattr(os, "O_BINARY", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_DIR_FD = os.open in os.supports_dir_fd and bool(_NOFOLLOW) and bool(_DIRECTORY)


def check_name(name: object, field: str = "files") -> str:
    """Return ``name`` if it is a plain relative path inside a bundle, else raise BundleError.

    ``field`` names where the name came from (``files``, ``artifacts.model`` ...) for the message.
    """
    if not isinstance(name, str):
        raise BundleError(f"manifest '{field}': a path must be a string, got {type(name).__name__}")
    shown = repr(name) if len(name) <= 200 else repr(name[:200]) + "..."
    why = _why_not(name)
    if why:
        raise BundleError(f"manifest '{field}': path {shown} is refused: {why}")
    return name


def _why_not(name: str) -> str:
    if not name:
        return "it is empty"
    if "\x00" in name:
        return "it contains a NUL character"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "it is not valid UTF-8"
    if len(encoded) > MAX_NAME_BYTES:
        return f"it is longer than {MAX_NAME_BYTES} bytes"
    if "\\" in name:
        return "it contains a backslash (bundle paths use '/')"
    if name.startswith("/"):
        return "it is absolute (bundle paths are relative to the bundle directory)"
    if _DRIVE.match(name):
        return "it starts with a drive letter"
    for part in name.split("/"):
        if part in ("", ".", ".."):
            return "it has an empty, '.' or '..' component (only plain names inside the bundle)"
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            return f"a component is longer than {MAX_COMPONENT_BYTES} bytes"
        if any(ord(c) < 0x20 for c in part):
            return "it contains a control character"
    return ""


def open_member(root: Path, name: str) -> int:
    """Open ``root/name`` for reading without following any symlink; return the file descriptor.

    Raises BundleError when a component is a symlink or the target is not a regular file, and
    FileNotFoundError when it does not exist (callers turn that into "missing").
    """
    check_name(name)
    flags = os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _BINARY
    parts = name.split("/")
    if _DIR_FD:  # openat() one component at a time: no component can be swapped for a link
        dfd = os.open(root, os.O_RDONLY | _DIRECTORY)
        try:
            for part in parts[:-1]:
                nxt = _open_at(dfd, part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW, root, name)
                os.close(dfd)
                dfd = nxt
            fd = _open_at(dfd, parts[-1], flags, root, name)
        finally:
            os.close(dfd)
    else:  # pragma: no cover - platforms without openat (Windows): check each component first
        path = root
        for part in parts[:-1]:
            path = path / part
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
                raise BundleError(f"{root}: '{name}' passes through '{part}', which is not a plain directory")
        if stat.S_ISLNK(os.lstat(root / name).st_mode):
            raise BundleError(f"{root}: '{name}' is a symbolic link; bundles may not contain links")
        fd = os.open(root / name, flags)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise BundleError(f"{root}: '{name}' is not a regular file")
    if _NONBLOCK and hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return fd


def _open_at(dfd: int, part: str, flags: int, root: Path, name: str) -> int:
    try:
        return os.open(part, flags, dir_fd=dfd)
    except OSError as exc:
        # O_NOFOLLOW on a link: ELOOP (Linux), EMLINK (FreeBSD); O_DIRECTORY on a link or file: ENOTDIR
        if exc.errno not in (errno.ELOOP, errno.EMLINK, errno.ENOTDIR):
            raise
        try:
            is_link = stat.S_ISLNK(os.stat(part, dir_fd=dfd, follow_symlinks=False).st_mode)
        except OSError:
            is_link = exc.errno != errno.ENOTDIR
        what = "a symbolic link; bundles may not contain links" if is_link else "not a directory"
        raise BundleError(f"{root}: '{name}': '{part}' is {what}") from None


def walk(root: Path) -> Iterator[str]:
    """Relative POSIX names of every regular file under ``root``; BundleError on a symlink or
    special file anywhere in the tree (a linked folder could hold files from anywhere)."""
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            entries = sorted(os.scandir(root / rel if rel else root), key=lambda e: e.name)
        except OSError as exc:
            raise BundleError(f"{root}: cannot list '{rel or '.'}' ({exc.strerror})") from exc
        for entry in entries:
            name = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_symlink():
                raise BundleError(f"{root}: '{name}' is a symbolic link; bundles may not contain links")
            if entry.is_dir(follow_symlinks=False):
                stack.append(name)
            elif entry.is_file(follow_symlinks=False):
                yield name
            else:
                raise BundleError(f"{root}: '{name}' is not a regular file or folder")
