"""Native (C/C++) chatter on stderr that no Python setting reaches.

A runtime that logs from C++ straight to file descriptor 2 ignores ``logging`` and the warnings
filters; LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." is one (no
environment variable turns it off; it is printed once per process, at the first tensor
allocation). :func:`native_stderr` wraps just that call: it captures fd 2, then writes back
every captured line except the known informational ones, so a real error still shows. When the
runtime's Python logger is enabled for INFO (``edgeslm -v`` sets it; a program may too),
nothing is dropped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def native_stderr(drop: tuple[str, ...], logger: str) -> Iterator[None]:
    """Inside the block, lines on fd 2 that start with one of ``drop`` are discarded."""
    if logging.getLogger(logger).isEnabledFor(logging.INFO):
        yield
        return
    fd = 2  # where C++ writes, whatever sys.stderr is now (a capture, a wrapper)
    if sys.stderr is not None:
        sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().decode(errors="replace").splitlines(keepends=True)
                    if not line.startswith(drop)]
            if kept:
                os.write(fd, "".join(kept).encode())
