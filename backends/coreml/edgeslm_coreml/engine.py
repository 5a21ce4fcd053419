"""Core ML engine: ``MLModel.predict`` with the KV cache as model state (macOS 15+ / iOS 18+).

Each call feeds ``input_ids`` (int32, (1, S)) and ``causal_mask`` (fp16, (1, 1, S, P + S));
the model writes the new keys/values into its ``key_cache``/``value_cache`` states in place,
so ``reset()`` is just a fresh ``make_state()``. Core ML prediction exists only on Apple
platforms: elsewhere opening a Core ML bundle raises :class:`CoreMLUnavailableError`, which
says how the bundle was verified instead.
"""

from __future__ import annotations

import sys
from typing import Sequence

import numpy as np

from edgeslm.errors import BackendNotInstalledError, BundleError
from edgeslm.runtime.engine import Engine, EngineOption

#: ``compute_units`` option values -> coremltools.ComputeUnit names
COMPUTE_UNITS = {"all": "ALL", "cpu_and_ne": "CPU_AND_NE", "cpu_and_gpu": "CPU_AND_GPU", "cpu": "CPU_ONLY"}


class CoreMLUnavailableError(BackendNotInstalledError):
    """Core ML prediction is not available on this platform (it exists on macOS/iOS only)."""


def causal_mask(past: int, new: int) -> np.ndarray:
    """(1, 1, new, past + new) fp16: 0 where query i (position past + i) may attend, -inf elsewhere."""
    q = np.arange(past, past + new)[:, None]
    k = np.arange(past + new)[None, :]
    return np.where(k <= q, 0.0, -np.inf).astype(np.float16)[None, None]


def verified_by(manifest: dict) -> str:
    p = manifest.get("parity") or {}
    how = "by running its traced torch graph against the source"
    if p.get("top1_agreement") is not None:
        how += f" (greedy top-1 {p['top1_agreement']:.0%} over {p.get('tokens')} tokens)"
    return how + " and by inspecting the package spec (inputs, states, ops, weight compression)"


class CoreMLEngine(Engine):
    """Options: ``compute_units`` (all | cpu_and_ne | cpu_and_gpu | cpu; default all);
    ``threads`` is accepted and ignored (Core ML schedules its own work)."""

    name = "coreml"
    known_options = {
        "compute_units": EngineOption("str", "all (default), cpu_and_ne, cpu_and_gpu, cpu"),
        "threads": EngineOption("int", "accepted and ignored (Core ML schedules its own work)"),
    }

    def __init__(self, bundle, compute_units: str = "all", threads: int | None = None, **options):
        super().__init__(bundle, compute_units=compute_units, **options)
        if sys.platform != "darwin":
            raise CoreMLUnavailableError(
                f"{bundle.path}: Core ML runs on Apple platforms (macOS 15+/iOS 18+), not on {sys.platform}; "
                f"this bundle was verified on Linux {verified_by(bundle.manifest)}. Run it on a Mac with "
                f"`edgeslm run`, or on iPhone/iPad with firmware_examples/ios-coreml")
        from edgeslm._deps import require

        ct = require("coremltools", "coreml", "running Core ML bundles")
        unit = COMPUTE_UNITS.get(str(compute_units).lower())
        if unit is None:
            raise BundleError(f"compute_units '{compute_units}' is not one of {', '.join(COMPUTE_UNITS)}")
        path = bundle.artifact("model")
        try:
            self.model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, unit))
        except Exception as exc:
            raise BundleError(f"Core ML cannot load {path}: {exc}") from exc
        self.reset()

    def reset(self) -> None:
        self.state = self.model.make_state()
        self.position = 0

    def _run(self, ids: np.ndarray) -> np.ndarray:
        feed = {"input_ids": ids.astype(np.int32).reshape(1, -1), "causal_mask": causal_mask(self.position, ids.size)}
        out = self.model.predict(feed, state=self.state)
        self.position += ids.size
        return np.asarray(out["logits"], dtype=np.float32).reshape(-1)

    def prefill(self, token_ids: Sequence[int]) -> np.ndarray:
        return self._run(self.check_tokens(token_ids))

    def decode(self, token_id: int) -> np.ndarray:
        return self._run(self.check_tokens([token_id]))

    def close(self) -> None:
        self.model = self.state = None
