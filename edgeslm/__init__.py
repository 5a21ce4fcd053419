"""edgeslm: take a small language model to edge devices and keep it healthy there.

>>> import edgeslm
>>> model = edgeslm.load("out/smollm2-onnx")                      # doctest: +SKIP
>>> print(model.generate("The capital of France is", max_new_tokens=8).text)  # doctest: +SKIP
"""

from __future__ import annotations

from .errors import EdgeSLMError

__version__ = "0.1.0"

__all__ = ["EdgeSLMError", "__version__", "load"]


def load(path, engine_options=None, trusted_keys=None, reuse_cache=True, snapshot=None):
    """Open a bundle directory and return a :class:`~edgeslm.runtime.model.LoadedModel`.

    The manifest names the format; the engine registered for it under the entry-point group
    ``edgeslm.engines`` runs it. Every file's sha256 is checked first. With ``trusted_keys``
    the manifest's signature is checked too, and the engine runs a private copy of the files
    made while hashing them (``snapshot``; default on with keys, off without). ``engine_options``
    are checked against the engine's declared options; ``reuse_cache=False`` turns off KV-cache
    prefix reuse between calls (each call then prefills its whole prompt).
    """
    from .runtime.model import LoadedModel

    return LoadedModel.open(path, engine_options=engine_options, trusted_keys=trusted_keys,
                            reuse_cache=reuse_cache, snapshot=snapshot)
