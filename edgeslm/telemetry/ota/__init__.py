"""Over-the-air model updates: signed deployment commands, A/B slots on the device, staged rollouts.

::

    operator: edgeslm fleet rollout BUNDLE --fleet F            device: edgeslm agent --state-dir D --key K
    ┌──────────────────────────────────┐  signed command (retained,  ┌──────────────────────────────────────────┐
    │ controller.py                    │  QoS 1) on .../DEV/commands │ device.py (Deployer)                     │
    │  stages canary -> 50% -> 100%    │ ──────────────────────────> │  verify signature -> download (HTTP,     │
    │  halts + rolls back a stage when │                             │  Range) into the inactive slot -> verify │
    │  failures > --max-failures       │ <── ota.* events (agent  ── │  -> swap (state.json, atomic) -> health  │
    │  rollout + devices in the store  │     queue, collector store) │  (smoke parity + TTFT/tok/s) -> commit   │
    └──────────────────────────────────┘                             │  or roll back by itself (crash loop too) │
            bundle files: HTTP(S) artifact server (serve-artifacts)  └──────────────────────────────────────────┘

Modules: :mod:`.command` (wire format, ed25519 signatures), :mod:`.slots` (A/B state that
survives power loss), :mod:`.download` (resumable HTTP), :mod:`.health` (smoke test and speed
check), :mod:`.device` (the agent side), :mod:`.controller` (stages), :mod:`.artifacts` (a
static HTTP server with Range). Documented in docs/telemetry.md ("Model rollouts").
"""
