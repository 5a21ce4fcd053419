"""Library chatter that no ``logging`` or warnings setting reaches, kept off the user's terminal.

Two kinds, each wrapped around just the call that makes it:

- **Native (C/C++) lines on fd 2**: LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate
  for CPU." (no environment variable turns it off; printed once per process, at the first
  tensor allocation). :func:`native_stderr` captures fd 2 and writes back every line except
  the known informational ones, so a real error still shows.
- **Python prints on stdout**: NNCF draws a rich progress bar on stdout while it compresses
  weights, where it would mix with a verb's result. :func:`library_stdout` swallows it.

Both let everything through when :func:`set_verbose` is on (``edgeslm -v`` turns it on; a
program may too).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Iterator

_verbose = False


def set_verbose(on: bool) -> bool:
    """Let the libraries speak (True) or not; returns the previous setting."""
    global _verbose
    previous, _verbose = _verbose, bool(on)
    return previous


def verbose() -> bool:
    return _verbose


@contextlib.contextmanager
def native_stderr(drop: tuple[str, ...]) -> Iterator[None]:
    """Inside the block, lines on fd 2 that start with one of ``drop`` are discarded."""
    if _verbose:
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


@contextlib.contextmanager
def library_stdout() -> Iterator[None]:
    """Inside the block, what Python code prints on ``sys.stdout`` is discarded (unless verbose,
    then it goes to stderr: it is never a verb's result)."""
    with contextlib.redirect_stdout(sys.stderr if _verbose else io.StringIO()):
        yield


_exit_silenced = False


def native_teardown_quiet() -> None:
    """From now on, the process ends with fd 2 pointed at /dev/null (unless verbose then).

    For native libraries that log from C++ static destructors, after Python has finished:
    LiteRT's TensorBuffer wrapper brings up a process-wide environment on the first buffer
    write and destroys it at exit with "INFO: ... DestroyAccelerator" lines. An ``atexit``
    handler registered once; it runs after every handler registered later (LIFO), flushes
    ``sys.stderr`` first, and leaves fd 2 alone when :func:`set_verbose` is on at exit."""
    global _exit_silenced
    if _exit_silenced:
        return
    _exit_silenced = True

    def _silence() -> None:
        if _verbose:
            return
        if sys.stderr is not None:
            sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)

    import atexit

    atexit.register(_silence)
