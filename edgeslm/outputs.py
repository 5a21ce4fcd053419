"""Creating output folders with one-line errors (:class:`~edgeslm.errors.OutputError`).

Every verb that writes somewhere (export, compress, distill, finetune, micro, keys generate)
creates its folders through :func:`make_dir`; the CLI also checks ``-o`` paths with
:func:`check_output_dir` before minutes of work start.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import OutputError


def make_dir(path: str | Path, what: str = "output folder") -> Path:
    """``mkdir -p path``; OutputError when a file is in the way or the folder cannot be made."""
    path = Path(path)
    check_output_dir(path, what)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create the {what} ({exc.strerror or exc})") from None
    return path


def check_output_dir(path: str | Path, what: str = "output folder") -> Path:
    """Refuse, without creating anything, a path that cannot become a writable folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: exists and is not a folder; choose another {what}")
    probe = path
    while not probe.exists():  # the nearest existing ancestor must be a folder we can write in
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputError(f"{path}: cannot create the {what}: '{probe}' is a file")
    if probe.exists() and probe != path and not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot create the {what}: '{probe}' is not writable")
    return path
