"""Pulling the plug on purpose: ``EDGESLM_OTA_CRASH_AT=<step>`` SIGKILLs the agent at that update step.

The power-loss tests (tests/telemetry/test_ota_power.py) run real agent processes with it, one
step each: accepted, download (inside a file), downloaded, verified, swapped, health, healthy,
failed (between a failed health check and the revert), trial_boot (every start on trial).
Unset (always, outside those tests) it does nothing.
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "EDGESLM_OTA_CRASH_AT"


def crashpoint(step: str) -> None:
    """Power loss at ``step``: the process dies at once, with no cleanup of any kind."""
    if os.environ.get(CRASH_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)
