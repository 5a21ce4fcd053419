"""Run a .tflite in the TFLite Micro Python interpreter (``tflite-micro`` on PyPI).

The interpreter aborts the process (SIGSEGV) when an arena is too small, so each run happens in
a child process: ``python -m edgeslm_litert.micro.tflm MODEL INPUTS.npy OUTPUTS.npy ARENA``.
The child prints TFLM's RecordingMicroAllocator report; the arena it needs is parsed from it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgeslm.errors import ExportError


def run_tflm(model: Path, inputs: np.ndarray, arena: int = 64 * 1024, max_arena: int = 8 << 20) -> tuple[np.ndarray, int]:
    """Outputs (B, V) int8 for inputs (B, ...) int8, and the arena bytes TFLM allocated."""
    with tempfile.TemporaryDirectory(prefix="edgeslm-tflm-") as tmp:
        inp, outp = Path(tmp) / "in.npy", Path(tmp) / "out.npy"
        np.save(inp, inputs)
        while True:
            proc = subprocess.run([sys.executable, "-m", __name__, str(model), str(inp), str(outp), str(arena)],
                                  capture_output=True, text=True)
            if proc.returncode == 0:
                break
            if arena >= max_arena:
                raise ExportError(f"TFLite Micro could not run {model.name} (arena {arena} bytes): "
                                  f"{(proc.stdout + proc.stderr)[-1500:]}")
            arena *= 4  # too small an arena kills the child; try a bigger one
        m = re.search(r"Arena allocation total (\d+) bytes", proc.stdout + proc.stderr)
        if not m:
            raise ExportError(f"no arena report from TFLite Micro: {proc.stdout[-500:]}")
        return np.load(outp), int(m.group(1))


def quantize_input(x: np.ndarray, q: tuple[float, int]) -> np.ndarray:
    """Float input -> the int8 tensor a (scale, zero point) quantized input expects."""
    return np.clip(np.round(x / q[0]) + q[1], -128, 127).astype(np.int8)


def greedy_generate(model: Path, vocab, context: int, in_q: tuple[float, int], prompt: str, n: int,
                    arena: int) -> str:
    """The firmware's loop (main/main.cc, TEMPERATURE=0) in the TFLite Micro Python interpreter.

    The window is the last ``context`` characters of the text, left-padded with ' ' like
    micro_window_ids(); ``vocab`` is the model's CharVocab. ``arena`` must be one ``run_tflm``
    reported (too small aborts the process). Returns the ``n`` generated characters.
    """
    from tflite_micro.python.tflite_micro import runtime

    from .model import onehot

    pad = vocab.encode(" ")
    itp = runtime.Interpreter.from_bytes(Path(model).read_bytes(), arena_size=arena + 4096)
    text = prompt
    for _ in range(n):
        window = np.concatenate([np.repeat(pad, max(0, context - len(text))), vocab.encode(text[-context:])])
        itp.set_input(quantize_input(onehot(window[None], vocab.size), in_q), 0)
        itp.invoke()
        text += vocab.decode([np.argmax(itp.get_output(0)[0])])
    return text[len(prompt):]


def _main(model: str, inp: str, outp: str, arena: str) -> None:
    from tflite_micro.python.tflite_micro import runtime

    itp = runtime.Interpreter.from_bytes(Path(model).read_bytes(), arena_size=int(arena))
    xs = np.load(inp)
    outs = []
    for x in xs:
        itp.set_input(x[None], 0)
        itp.invoke()
        outs.append(np.array(itp.get_output(0)[0]))
    np.save(outp, np.stack(outs))
    sys.stdout.flush()
    itp.print_allocations()


if __name__ == "__main__":
    _main(*sys.argv[1:5])
