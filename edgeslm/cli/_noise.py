"""Keep the libraries' own chatter off the user's terminal unless they ask (-v/--verbose).

Where each kind of noise comes from and what stops it (measured on an export of a GGUF):

==================================================  =============================================
noise                                               off by
==================================================  =============================================
torchao "Failed to load ... .so" (import)           logger ``torchao`` (a ``logging.warning``
                                                    that reaches logging's last-resort handler)
torch ``W... _pytree.py] <enum ...> is an Enum``     logger ``torch.utils._pytree``: torch resets
(torchao registers enums at import)                 the ``torch`` logger on import, not children
transformers' tqdm bars ("Loading weights",         ``HF_HUB_DISABLE_PROGRESS_BARS``, read when
"Converting and de-quantizing GGUF tensors")        transformers is imported, ``TQDM_DISABLE`` for
                                                    plain tqdm; ``disable_progress_bar()`` when
                                                    transformers is already imported
transformers advisory warnings                      ``TRANSFORMERS_VERBOSITY=error``
TensorFlow / absl / glog C++ logs (LiteRT tools)    ``TF_CPP_MIN_LOG_LEVEL``, ``GLOG_minloglevel``,
                                                    logger ``absl``
LiteRT "INFO: Created TensorFlow Lite XNNPACK      ``edgeslm.quiet.native_stderr`` around the
delegate" (C++, fd 2, no switch)                    engine's first allocation (the last resort)
NNCF's rich progress bar (drawn on stdout)          ``edgeslm.quiet.library_stdout`` around
                                                    ``nncf.compress_weights``
Python warnings from any library                    a warnings filter that keeps edgeslm's own
any other print on stdout                           with --json stdout is redirected to stderr
                                                    while the verb runs (``_output.py``)
==================================================  =============================================

Environment variables must be set before the library is imported; every verb imports its heavy
libraries inside its body, after :func:`apply` ran. A variable the user set is left as it is.
:func:`restore` undoes everything (the CLI calls it when a command ends, so tests that call
:func:`edgeslm.cli.main` in-process see no lasting change).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

from .. import quiet

ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "GLOG_minloglevel": "2",
    "TORCH_CPP_LOG_LEVEL": "ERROR",
    "TOKENIZERS_PARALLELISM": "false",  # the fork warning of tokenizers
}

LOGGERS = ("torchao", "torch.utils._pytree", "torch.onnx", "torch._dynamo", "torch.export", "torch._export",
           "torch.fx", "onnxscript", "transformers", "accelerate", "huggingface_hub", "peft", "absl",
           "tensorflow", "jax", "jax._src", "nncf", "openvino", "litert_torch", "ai_edge_torch",
           "ai_edge_quantizer", "ai_edge_litert", "coremltools", "gguf", "urllib3", "matplotlib")

_undo: list = []


def apply(verbose: bool) -> None:
    """Quiet the libraries (or, with ``verbose``, let them speak and show edgeslm's own INFO logs)."""
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        log = logging.getLogger("edgeslm")
        level = log.level
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        _undo.append(lambda: (log.removeHandler(handler), log.setLevel(level)))
        previous = quiet.set_verbose(True)  # native_stderr / library_stdout let everything through
        _undo.append(lambda: quiet.set_verbose(previous))
        return
    for key, value in ENV.items():
        if key not in os.environ:
            os.environ[key] = value
            _undo.append(lambda key=key: os.environ.pop(key, None))
    for name in LOGGERS:
        log = logging.getLogger(name)
        _undo.append(lambda log=log, level=log.level: log.setLevel(level))
        log.setLevel(logging.ERROR)
    filters = warnings.filters[:]
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", module=r"edgeslm(\.|$)")
    warnings.filterwarnings("default", module=r"edgeslm_\w+(\.|$)")
    _undo.append(lambda: _set_warning_filters(filters))
    if "transformers" in sys.modules:  # imported before the verb ran (a test calling main())
        tl = sys.modules["transformers"].utils.logging
        was = tl.is_progress_bar_enabled()
        tl.disable_progress_bar()
        if was:
            _undo.append(tl.enable_progress_bar)


def _set_warning_filters(filters: list) -> None:
    warnings.filters[:] = filters
    warnings._filters_mutated()  # drop the cached "already warned" registries


def restore() -> None:
    while _undo:
        _undo.pop()()
