"""Helpers shared by the telemetry tests (tests import these, never conftest)."""

from __future__ import annotations

import time


def wait_for(predicate, timeout: float = 10.0, step: float = 0.02):
    """Poll ``predicate`` until truthy or ``timeout``; returns its last value (bounded loop)."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(step)
        value = predicate()
    return value
