"""The agent's side of a rollout: take signed commands, update the bundle A/B, check it, keep or undo it.

::

    boot ──> trial open? ── boots > crash_loop_boots ──> revert ─┐
      │            └── load the trial slot, health again ─────────┤
      └──> load current (verified; on failure the previous) ──────┴──> serve; resume an unfinished job

    deploy: accepted -> download (inactive slot, Range) -> verified -> baseline speed -> swap (trial)
            -> load -> health (smoke parity, speed) -> probation -> committed        (each an ota.* event)
                                                   └── failed -> revert -> rolled_back

Every step is written to ``state.json`` (:mod:`.slots`) before it happens and reported after,
so a power loss at any instant resumes the job or undoes it, and the agent only ever runs a
slot that the state calls verified and that passes the bundle's hash check on load (the
power-loss tests pull the plug at every step: :mod:`.crash`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ...bundle.schema import MANIFEST_FILE
from ...errors import EdgeSLMError
from . import health as H
from .command import Command, CommandError, Health, verify
from .crash import crashpoint
from .download import CHUNK, Downloader, _sha256
from .slots import Slots

log = logging.getLogger("edgeslm.ota")


class Deployer:
    """One per agent. ``loader(path) -> model`` opens a bundle (checking hashes and signature);
    ``report(name, message, severity, **attributes)`` queues an event (the agent's :meth:`event`);
    ``switch(model) -> old model`` makes the agent serve another model."""

    def __init__(self, state_dir: str | Path, trusted_keys: list[Any], loader: Callable[[Path], Any],
                 report: Callable[..., Any], fleet: str, device: str, ca_file: str | None = None):
        if not trusted_keys:
            raise EdgeSLMError("model updates need trusted keys (--key): unsigned deployments are refused")
        self.slots = Slots(state_dir)
        self.keys = list(trusted_keys)
        self.loader, self.report = loader, report
        self.fleet, self.device = fleet, device
        self.downloader = Downloader(ca_file, on_chunk=self._chunk)
        self.recent = H.RecentSpeed()
        self.switch: Callable[[Any], Any] | None = None  # set by the agent
        self.model: Any = None
        self.lock: Any = threading.Lock()  # the agent's model lock: health runs never overlap a request
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._cancel = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- boot -------------------------------------------------------------------------------
    def boot(self, initial: Path | None) -> Any:
        """The model to serve now (after a crash loop check); installs ``initial`` into an empty state."""
        s = self.slots
        if s.current is None:
            if initial is None:
                raise EdgeSLMError(f"{s.root} holds no bundle yet: start the agent once with --bundle")
            model = self.loader(initial)  # checks it before it becomes slot a
            sha = _sha256(Path(initial) / MANIFEST_FILE)
            s.install_initial(Path(initial), sha, _bundle_id(model))
            model.close()
        trial = s.state.get("trial")
        if trial:
            trial["boots"] += 1  # counted before anything of the new bundle runs
            s.save()
            limit = self._job_health().crash_loop_boots
            if trial["boots"] > limit:
                self._revert("crash_loop", f"the agent restarted {trial['boots'] - 1} times on the new bundle")
                return self.model  # the previous bundle, loaded by the revert
            crashpoint("trial_boot")  # (tests: a bundle that kills the agent every time it starts)
        self.model = self._load_current()
        return self.model

    def _load_current(self) -> Any:
        s = self.slots
        try:
            return self.loader(s.path(s.current))
        except Exception as exc:  # the running slot failed its check: the previous one, if any
            if s.previous is None:
                raise
            log.error("slot %s does not load (%s): going back to slot %s", s.current, exc, s.previous)
            self._revert("load", f"the bundle does not load: {exc}", load=False)
            return self.loader(s.path(s.current))

    def start(self) -> None:
        """Start the worker; it resumes an unfinished job first."""
        self._thread = threading.Thread(target=self._run, name="edgeslm-ota", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._cancel.set()
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(10)

    def submit(self, payload: bytes) -> None:
        """A message from the commands topic (network thread): verified and handled on the worker.

        A rollback or cancel of the rollout whose download is under way stops that download now
        (the worker is busy with it; the command itself is handled right after)."""
        job = self.slots.state.get("job")
        if job and job.get("step") in ("accepted", "downloading"):
            try:
                cmd = verify(payload, self.keys, self.fleet, self.device)
                if cmd.action in ("rollback", "cancel") and cmd.rollout == job["command"]["rollout"]:
                    self._cancel.set()
            except CommandError:
                pass  # reported when the worker gets to it
        self._inbox.put(bytes(payload))

    def observe(self, result: Any) -> None:
        self.recent.observe(self._current_sha(), result)

    # -- worker -----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._resume()
        except Exception:
            log.exception("resuming the OTA job failed")
        while not self._stop.is_set():
            try:
                payload = self._inbox.get(timeout=self._probation_wait())
            except queue.Empty:
                payload = None
            if self._stop.is_set():
                return
            try:
                self._probation_check()
                if payload is not None:
                    self._handle(payload)
            except Exception:  # a bug must not end model updates for good
                log.exception("OTA worker cycle failed")

    def _handle(self, payload: bytes) -> None:
        try:
            cmd = verify(payload, self.keys, self.fleet, self.device)
        except CommandError as exc:
            self.report("ota.refused", f"refused a command: {exc}", "warning", reason=exc.reason,
                        rollout=exc.rollout, command=exc.command, verified=False)
            return
        if cmd.id in self.slots.state.get("done", []):
            return  # the retained command again (reconnect): already handled
        job = self.slots.state.get("job")
        if job and job["command"]["id"] == cmd.id:
            return  # this job is under way (resumed at boot)
        if cmd.action == "deploy":
            self._deploy(cmd)
        elif cmd.action == "rollback":
            self._rollback_command(cmd)
        else:
            self.slots.remember(cmd.id)
            self.report("ota.cancelled", f"rollout {cmd.rollout}: nothing to cancel", rollout=cmd.rollout,
                        command=cmd.id)

    # -- deploy -----------------------------------------------------------------------------
    def _deploy(self, cmd: Command) -> None:
        s = self.slots
        attrs = self._attrs(cmd)
        trial = s.state.get("trial")
        if trial and trial.get("healthy_at") and s.state.get("job"):  # an earlier rollout on probation: keep it
            trial["healthy_at"] = 1.0  # (long past: the probation is over)
            self._probation_check()
        if s.info(s.current).get("manifest_sha256") == cmd.bundle["manifest_sha256"] and not s.state.get("trial"):
            s.remember(cmd.id)
            self.report("ota.succeeded", f"already running {cmd.bundle['id']}", already=True, **attrs)
            return
        self._cancel.clear()
        s.state["job"] = {"command": {**cmd.body(), "key_id": cmd.key_id}, "step": "accepted"}
        s.save()
        self.report("ota.accepted", f"rollout {cmd.rollout}: deploying {cmd.bundle['id']}", **attrs)
        crashpoint("accepted")
        self._continue(cmd)

    def _continue(self, cmd: Command) -> None:
        """Carry the job from its recorded step to its end (also after a restart)."""
        s, attrs = self.slots, self._attrs(cmd)
        job = s.state["job"]
        slot = s.inactive()
        try:
            if job["step"] in ("accepted", "downloading"):
                self._download(cmd, slot, job)
            if job["step"] == "downloaded":
                self._verify(cmd, slot, job)
        except (CommandError, EdgeSLMError, OSError) as exc:
            reason = getattr(exc, "reason", "verify")
            self._finish(cmd, "ota.failed", f"{reason}: {exc}", "error", reason=reason, rolled_back=False)
            return
        if job["step"] == "verified":
            job["baseline"] = self._baseline(cmd)
            s.save()
            s.swap(slot, cmd.rollout, cmd.id)
            job["step"] = "swapped"
            s.save()
            self.report("ota.swapped", f"now on slot {slot}", slot=slot, **attrs)
            crashpoint("swapped")
            self._activate(s.current)
        self._check(cmd)

    def _download(self, cmd: Command, slot: str, job: dict) -> None:
        s, attrs = self.slots, self._attrs(cmd)
        if job["step"] == "accepted":
            s.begin_download(slot)
            job["step"] = "downloading"
            s.save()
            self.report("ota.downloading", f"downloading {cmd.bundle['url']}", **attrs)
        self.downloader.fetch(cmd.bundle["url"], s.path(slot), cmd.bundle["manifest_sha256"])
        job["step"] = "downloaded"
        s.save()
        self.report("ota.downloaded", f"{cmd.bundle['id']} downloaded", **attrs)
        crashpoint("downloaded")

    def _verify(self, cmd: Command, slot: str, job: dict) -> None:
        from ...bundle import Bundle

        s = self.slots
        b = Bundle.open(s.path(slot), verify=True, trusted_keys=self.keys, snapshot=False)
        if _sha256(s.path(slot) / MANIFEST_FILE) != cmd.bundle["manifest_sha256"]:
            raise CommandError("hash", "the manifest changed after the download")
        s.mark_verified(slot, cmd.bundle["manifest_sha256"], b.manifest.get("name") or cmd.bundle["id"], cmd.rollout)
        job["step"] = "verified"
        s.save()
        self.report("ota.verified", f"signature {b.key_id} and every file hash match", key_id=b.key_id,
                    **self._attrs(cmd))
        crashpoint("verified")

    def _baseline(self, cmd: Command) -> dict | None:
        """The running bundle's speed: recent telemetry, else measured now (before the swap)."""
        sp = self.recent.speed(self._current_sha())
        if sp is None and self.model is not None and cmd.health.smoke:
            sp = self._quiet(lambda: H.measure(self.model, cmd.health.smoke))
        return sp.to_dict() if sp else None

    def _check(self, cmd: Command) -> None:
        """Health of the trial slot: keep it (probation, then commit) or revert."""
        s, h = self.slots, cmd.health
        crashpoint("health")
        agreement, steps = self._quiet(lambda: H.smoke(self.model, h.smoke)) if h.smoke else (1.0, 0)
        new = self._quiet(lambda: H.measure(self.model, h.smoke)) if h.smoke else None
        b = (s.state["job"] or {}).get("baseline")
        verdict = H.judge(h, agreement, steps, new, H.Speed(b["ttft_s"], b["tok_s"], b["samples"]) if b else None)
        if not verdict.ok:
            crashpoint("failed")
            self._revert("health", verdict.reason, cmd=cmd, details=verdict.details)
            return
        s.state["trial"]["healthy_at"] = time.time()
        s.save()
        self.report("ota.healthy", "health check passed", **verdict.details, **self._attrs(cmd))
        crashpoint("healthy")
        self._probation_check()

    def _probation_wait(self) -> float:
        trial = self.slots.state.get("trial")
        if not trial or not trial.get("healthy_at"):
            return 1.0
        left = trial["healthy_at"] + self._job_health().probation_s - time.time()
        return max(0.05, min(1.0, left))

    def _probation_check(self) -> None:
        s = self.slots
        trial = s.state.get("trial")
        if not trial or not trial.get("healthy_at") or not s.state.get("job"):
            return
        if time.time() - trial["healthy_at"] < self._job_health().probation_s:
            return
        cmd = self._job_command()
        s.commit()
        self._finish(cmd, "ota.succeeded", f"running {cmd.bundle['id']}", "info", slot=s.current)

    # -- undo -------------------------------------------------------------------------------
    def _revert(self, reason: str, message: str, cmd: Command | None = None, details: dict | None = None,
                load: bool = True) -> None:
        s = self.slots
        cmd = cmd or self._job_command()
        bad = s.current
        if cmd is not None:  # the outcome goes into the same state write as the revert: a power loss
            self._record(cmd, "ota.failed", message, "error", {})  # after it cannot resume the job
        s.revert()
        if load:
            self._activate(s.current)
        if cmd is not None:
            self._finish(cmd, "ota.failed", message, "error", reason=reason, rolled_back=True, **(details or {}))
        else:
            self.report("ota.rolled_back", message, "error", reason=reason, slot=s.current, bad_slot=bad)

    def _rollback_command(self, cmd: Command) -> None:
        s = self.slots
        job = s.state.get("job")
        mine = bool(job) and job["command"]["rollout"] == cmd.rollout
        if mine:  # its job (a download, or the trial) ends here: dropped in the same write as the revert
            s.state["job"] = None
        on_it = s.info(s.current).get("rollout") == cmd.rollout and s.previous is not None
        if on_it:
            s.revert()
            self._activate(s.current)
        elif mine:
            s.save()
        s.remember(cmd.id)
        self.report("ota.rolled_back", f"rollout {cmd.rollout}: " + ("back on the previous bundle" if on_it
                                                                      else "was not on it"),
                    "warning" if on_it else "info", reason="command", changed=on_it, rollout=cmd.rollout,
                    command=cmd.id, slot=s.current)

    # -- helpers ----------------------------------------------------------------------------
    def _resume(self) -> None:
        s = self.slots
        job = s.state.get("job")
        if not job:
            return
        cmd = self._job_command()
        if job.get("step") in ("succeeded", "failed"):  # finished, the report may not have been queued
            self._finish(cmd, f"ota.{job['step']}", job.get("message", ""), job.get("severity", "info"),
                         **job.get("report", {}))
        elif s.state.get("trial"):
            if s.state["trial"].get("healthy_at") is None:
                self._check(cmd)
        elif s.current is not None and s.info(s.current).get("manifest_sha256") == cmd.bundle["manifest_sha256"]:
            self._finish(cmd, "ota.succeeded", "already running it", "info")
        else:
            self._continue(cmd)

    def _record(self, cmd: Command, name: str, message: str, severity: str, report: dict) -> None:
        s = self.slots
        s.state["job"] = {"command": s.state["job"]["command"] if s.state.get("job") else cmd.body(),
                          "step": name.split(".", 1)[1], "message": message, "severity": severity, "report": report}

    def _finish(self, cmd: Command, name: str, message: str, severity: str, **report: Any) -> None:
        """Record the outcome, report it, then forget the job (a crash in between reports it again)."""
        s = self.slots
        self._record(cmd, name, message, severity, report)
        s.save()
        self.report(name, message, severity, **report, **self._attrs(cmd))
        s.state["job"] = None
        s.remember(cmd.id)

    def _activate(self, slot: str) -> None:
        model = self.loader(self.slots.path(slot))
        old, self.model = self.model, model
        if self.switch is not None:
            old = self.switch(model)
        if old is not None and old is not model:
            old.close()

    def _quiet(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the served model without its generations counting as requests."""
        with self.lock:
            gen = getattr(self.model, "generator", None)
            saved = list(gen.listeners) if gen is not None else []
            if gen is not None:
                gen.listeners.clear()
            try:
                return fn()
            finally:
                if gen is not None:
                    gen.listeners[:] = saved

    def _chunk(self, name: str, done: int) -> None:
        if self._cancel.is_set():
            raise CommandError("cancelled", "the rollout was rolled back during the download")
        if done >= CHUNK:  # inside the first file longer than one read
            crashpoint("download")

    def _job_command(self) -> Command | None:
        job = self.slots.state.get("job")
        if not job:
            return None
        b = job["command"]
        return Command(b["action"], b["id"], b["rollout"], b["fleet"], b["device"], b["issued_at"], b["expires_at"],
                       b.get("bundle"), Health.from_dict(b.get("health") or {}), b.get("key_id", ""))

    def _job_health(self) -> Health:
        cmd = self._job_command()
        return cmd.health if cmd is not None and cmd.health else Health()

    def _current_sha(self) -> str:
        return self.slots.info(self.slots.current).get("manifest_sha256", "")

    def _attrs(self, cmd: Command) -> dict[str, Any]:
        b = cmd.bundle or {}
        return {"rollout": cmd.rollout, "command": cmd.id, "bundle_id": b.get("id"),
                "manifest_sha256": b.get("manifest_sha256")}


def _bundle_id(model: Any) -> str:
    m = getattr(getattr(model, "bundle", None), "manifest", None) or {}
    return str(m.get("name") or (m.get("spec") or {}).get("name") or "")
