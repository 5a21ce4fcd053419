"""The rollout controller: stages, failure thresholds, halt-and-roll-back, all recorded in the store.

::

    create (devices ordered by sha256(rollout id + device): stable across restarts)
      stage k: publish a signed deploy (retained, QoS 1) to its devices
               read their ota.* events from the store (written there by the collectors)
               failures (failed, refused, timed out) > allowed  ──> halting: rollback to the stage's
               every device final and within the threshold          devices that took it -> halted
                 ├─ paused? stay (``pause`` / ``resume``)
                 └─ next stage, or completed after the last
      abort: rollback to every device that took it -> aborted

The controller keeps nothing that matters in memory: the rollout, each device's stage and state
are rows in the store, and each device's outcome comes from its events (also in the store), so
a controller that crashes and starts again (``edgeslm fleet rollout`` with the same bundle, or
``resume``) carries on where the store says, and re-publishing a command is harmless (the
device ignores a command id it has handled).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from ...errors import TelemetryError
from .command import Command, command_topic, sign

log = logging.getLogger("edgeslm.rollout")

PROGRESS = ("sent", "accepted", "downloading", "downloaded", "verified", "swapped", "healthy")
FINAL = ("succeeded", "failed", "refused", "timeout", "cancelled")
FAILURES = ("failed", "refused", "timeout")
ACTIVE = ("running", "halting", "aborting")
TERMINAL = ("completed", "halted", "aborted")
_RANK = {s: i for i, s in enumerate(("pending",) + PROGRESS)} | {s: 50 for s in FINAL} | {"rolled_back": 100}
_EVENT_STATE = {"ota.accepted": "accepted", "ota.downloading": "downloading", "ota.downloaded": "downloaded",
                "ota.verified": "verified", "ota.swapped": "swapped", "ota.healthy": "healthy",
                "ota.succeeded": "succeeded", "ota.failed": "failed", "ota.refused": "refused",
                "ota.cancelled": "cancelled"}


@dataclass
class RolloutSpec:
    fleet: str
    bundle: dict[str, Any]  # {id, url, manifest_sha256, bytes}
    stages: list[float]  # cumulative shares of the fleet, e.g. [0.1, 0.5, 1.0]
    max_failures: str = "0"  # per stage: a count ("2") or a share of the stage ("10%")
    health: dict[str, Any] | None = None
    stage_timeout_s: float = 900.0  # a device with no outcome by then counts as failed
    command_ttl_s: float = 7 * 24 * 3600.0

    def allowed(self, stage_size: int) -> int:
        m = self.max_failures.strip()
        if m.endswith("%"):
            return int(math.floor(float(m[:-1]) / 100 * stage_size))
        return int(m)


def parse_stages(canary: str, stages: str | None) -> list[float]:
    """``--canary 10%`` and ``--stages 50%,100%`` -> [0.1, 0.5, 1.0] (cumulative, increasing, ending at 1)."""
    def share(text: str) -> float:
        t = text.strip().rstrip("%")
        try:
            v = float(t) / 100
        except ValueError:
            raise TelemetryError(f"stage {text!r}: expected a percentage like 10%") from None
        if not 0 < v <= 1:
            raise TelemetryError(f"stage {text!r}: must be more than 0% and at most 100%")
        return v

    out = [share(canary)] + [share(s) for s in (stages or "50%,100%").split(",") if s.strip()]
    if out[-1] != 1.0:
        out.append(1.0)
    if any(b <= a for a, b in zip(out, out[1:])):
        raise TelemetryError(f"stages must grow: {', '.join(f'{v:.0%}' for v in out)}")
    return out


def rollout_id(fleet: str, manifest_sha256: str) -> str:
    return f"{fleet}.{manifest_sha256[:12]}"


class Controller:
    """``publish(topic, payload)`` sends one retained QoS 1 message (and waits for the broker)."""

    def __init__(self, store: Any, publish: Callable[[str, bytes], None], private_key: Any,
                 clock: Callable[[], float] = time.time):
        self.store, self.publish, self.key, self.clock = store, publish, private_key, clock
        self._cursor: dict[str, float] = {}

    # -- creating --------------------------------------------------------------------------
    def create(self, rid: str, spec: RolloutSpec, devices: list[str]) -> dict[str, Any]:
        """The rollout ``rid``: made now with ``devices`` assigned to stages, or the one the store has."""
        old = self.store.rollout(rid)
        if old is not None:
            return old
        if not devices:
            raise TelemetryError(f"no devices in fleet {spec.fleet}: nothing to roll out to")
        order = sorted(devices, key=lambda d: hashlib.sha256(f"{rid}/{d}".encode()).hexdigest())
        bounds = [max(1, math.ceil(share * len(order))) for share in spec.stages]
        rows, start = [], 0
        for k, end in enumerate(bounds):
            rows += [(d, k, "pending", "") for d in order[start:end]]
            start = max(start, end)
        r = {"id": rid, "fleet": spec.fleet, "state": "running", "stage": 0, "spec": spec.__dict__, "detail": "",
             "created_at": self.clock()}
        self.store.save_rollout_devices(rid, rows)
        self.store.save_rollout(r)
        return self.store.rollout(rid)

    def request(self, rid: str, state: str) -> dict[str, Any]:
        """pause / resume / abort: recorded in the store; whichever controller runs acts on it."""
        r = self._get(rid)
        allowed = {"paused": ("running",), "running": ("paused",), "aborting": ("running", "paused", "halting")}
        if r["state"] not in allowed[state]:
            raise TelemetryError(f"rollout {rid} is {r['state']}: cannot make it {state}")
        r["state"] = state
        if state == "aborting":
            r["unwind_at"] = None  # an abort tells every stage, even after a halt told one
        self.store.save_rollout(r)
        return r

    # -- driving ---------------------------------------------------------------------------
    def run(self, rid: str, poll_s: float = 1.0, timeout_s: float | None = None,
            on_change: Callable[[dict, list], None] | None = None) -> dict[str, Any]:
        """Advance the rollout until it completes, halts, aborts or is paused (or ``timeout_s``)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            r = self.step(rid)
            if on_change:
                on_change(r, self.store.rollout_devices(rid))
            if r["state"] not in ACTIVE or (deadline and time.monotonic() > deadline):
                return r
            time.sleep(poll_s)

    def step(self, rid: str) -> dict[str, Any]:
        """One pass: take in new device events, then publish, time out, or advance as the state says."""
        r = self._get(rid)
        spec = RolloutSpec(**r["spec"])
        devices = {d["device"]: d for d in self.store.rollout_devices(rid)}
        changed = self._events(r, devices)
        now = self.clock()
        if r["state"] == "running":
            changed |= self._stage(r, spec, devices, now)
        elif r["state"] in ("halting", "aborting"):
            changed |= self._unwind(r, spec, devices, now)
        if changed:
            self.store.save_rollout_devices(rid, [(d["device"], d["stage"], d["state"], d["detail"])
                                                  for d in devices.values() if d.get("_dirty")])
            self.store.save_rollout(r)
        return r

    def _stage(self, r: dict, spec: RolloutSpec, devices: dict, now: float) -> bool:
        k = r["stage"]
        members = [d for d in devices.values() if d["stage"] == k]
        todo = [d for d in members if d["state"] == "pending"]
        if todo:
            self._send(r, spec, "deploy", todo, now)
            _set(todo, "sent", f"sent {now:.3f}")
            r["detail"] = f"stage {k + 1}/{len(spec.stages)}: {len(members)} devices"
            return True
        changed = self._timeouts(members, spec, now)
        failures = [d for d in members if d["state"] in FAILURES]
        if len(failures) > spec.allowed(len(members)):
            r["state"] = "halting"
            r["detail"] = (f"stage {k + 1}: {len(failures)} of {len(members)} devices failed "
                           f"(allowed {spec.allowed(len(members))}); rolling the stage back")
            self._send(r, spec, "rollback", [d for d in members if _took_it(d)], now)
            r["unwind_at"] = now  # (in the store: a restarted controller keeps the same deadline)
            return True
        if all(d["state"] in FINAL for d in members):
            if k + 1 < len(spec.stages):
                r["stage"] = k + 1
                r["detail"] = f"stage {k + 1} done ({len(failures)} failures)"
                return True | self._stage(r, spec, devices, now)
            r["state"], r["detail"] = "completed", f"every stage done ({self._count(devices, 'succeeded')} devices)"
            return True
        return changed

    def _unwind(self, r: dict, spec: RolloutSpec, devices: dict, now: float) -> bool:
        """halting (this stage) / aborting (every stage): rollback sent; done when each confirmed or timed out."""
        scope = [d for d in devices.values() if r["state"] == "aborting" or d["stage"] == r["stage"]]
        if not r.get("unwind_at"):  # abort requested: tell them
            for d in scope:
                if d["state"] == "pending":
                    _set([d], "cancelled", "aborted before it was sent")
            self._send(r, spec, "rollback", [d for d in scope if _took_it(d)], now)
            r["unwind_at"] = now
            return True
        waiting = [d for d in scope if _took_it(d)]
        if waiting and now - r["unwind_at"] < spec.stage_timeout_s:
            return False
        r["state"] = "halted" if r["state"] == "halting" else "aborted"
        r["detail"] += f"; {self._count(devices, 'rolled_back')} devices rolled back" + (
            f", {len(waiting)} did not confirm" if waiting else "")
        return True

    def _timeouts(self, members: list[dict], spec: RolloutSpec, now: float) -> bool:
        late = [d for d in members if d["state"] in PROGRESS and now - _sent_at(d) > spec.stage_timeout_s]
        _set(late, "timeout", f"no outcome within {spec.stage_timeout_s:g} s")
        return bool(late)

    def _events(self, r: dict, devices: dict) -> bool:
        """Fold the devices' ota.* events for this rollout into their states (only ever forward)."""
        # a 2 s overlap: events committed later may carry the same receive time (one socket read, two
        # batches); folding an event twice changes nothing
        after = self._cursor.get(r["id"], r["created_at"] - 300.0) - 2.0
        changed = False
        for e in self.store.ota_events(r["fleet"], after):
            self._cursor[r["id"]] = max(self._cursor.get(r["id"], after), e["received_at"])
            a, d = e["attributes"], devices.get(e["device"])
            if d is None or a.get("rollout") != r["id"]:
                continue
            state = "rolled_back" if e["name"] == "ota.rolled_back" else _EVENT_STATE.get(e["name"])
            if state is None or _RANK[state] <= _RANK.get(d["state"], 0):
                continue
            detail = e["message"] if state in FINAL or state == "rolled_back" else d["detail"]
            _set([d], state, detail)
            changed = True
        return changed

    def _send(self, r: dict, spec: RolloutSpec, action: str, devices: list[dict], now: float) -> None:
        for d in devices:
            cmd = Command(action=action, id=f"{r['id']}:{action}", rollout=r["id"], fleet=r["fleet"],
                          device=d["device"], issued_at=now, expires_at=now + spec.command_ttl_s,
                          bundle=spec.bundle if action == "deploy" else None,
                          health=_health(spec) if action == "deploy" else None)
            self.publish(command_topic(r["fleet"], d["device"]), sign(cmd, self.key))

    def _get(self, rid: str) -> dict[str, Any]:
        r = self.store.rollout(rid)
        if r is None:
            raise TelemetryError(f"no rollout {rid!r} in the store")
        return r

    @staticmethod
    def _count(devices: dict, state: str) -> int:
        return sum(1 for d in devices.values() if d["state"] == state)


def _health(spec: RolloutSpec):
    from .command import Health

    return Health.from_dict(spec.health or {})


def _set(devices: list[dict], state: str, detail: str) -> None:
    for d in devices:
        d["state"], d["detail"], d["_dirty"] = state, detail[:500], True


def _took_it(d: dict) -> bool:
    """A device that may run (or be installing) the rollout's bundle: it must be told to roll back."""
    return d["state"] in PROGRESS or d["state"] in ("succeeded", "timeout")


def _sent_at(d: dict) -> float:
    try:
        return float(d["detail"].split("sent ", 1)[1]) if d["detail"].startswith("sent ") else d["updated_at"]
    except (IndexError, ValueError):
        return d["updated_at"]
