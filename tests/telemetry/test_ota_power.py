"""Power loss at every step of an update: `edgeslm agent` processes SIGKILL themselves mid-update.

Each device is a real ``edgeslm agent --state-dir`` process that receives a signed deploy
command and dies by SIGKILL at one step (``EDGESLM_OTA_CRASH_AT``: right after accepting,
inside a file's download, after the download, after verifying, right after the swap, during
the health check, on probation; a bundle that fails its health check dies between the
verdict and the revert). Right after each death its state names a complete slot that passes
the signature and hash checks; started again, it finishes the update (or the rollback). A
device whose new bundle kills it at every start rolls back by itself after 3 boots.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeslm.bundle import Bundle
from edgeslm.telemetry.mqtt import BrokerConfig
from edgeslm.telemetry.ota.command import Command, Health, command_topic, sign
from edgeslm.telemetry.ota.publish import CommandPublisher

from .helpers import wait_for
from .ota_helpers import keys, manifest_sha, variant

pytestmark = pytest.mark.mqtt
GOOD_STEPS = ["accepted", "download", "downloaded", "verified", "swapped", "health", "healthy"]


def state(root: Path) -> dict:
    try:
        return json.loads((root / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def current_verifies(root: Path, pub: Path) -> str:
    """The manifest sha256 of the slot the state names, after a full signature + hash check."""
    s = state(root)
    with Bundle.open(root / "slots" / s["current"], verify=True, trusted_keys=[pub], snapshot=False) as b:
        assert s["slots"][s["current"]]["state"] == "verified"
        return hashlib.sha256(b.manifest_bytes).hexdigest()


def test_an_update_survives_sigkill_at_every_step(onnx_bundle, mosquitto_factory, fleet_id, tmp_path):
    devices = {f"p-{step}": step for step in GOOD_STEPS} | {"p-badfail": "failed", "p-loop": "swapped"}
    users = {"operator": "o-pw", **{d: "pw" for d in devices}}
    port = mosquitto_factory(users=users, fleet=fleet_id).files.port
    release, pub = keys(tmp_path, "release")
    from edgeslm.telemetry.ota.artifacts import serve_artifacts, url_of

    art_dir = tmp_path / "art"
    art_dir.mkdir()
    v1 = variant(onnx_bundle, art_dir / "v1", release, "2026-01-01T00:00:00+00:00")
    v2 = variant(onnx_bundle, art_dir / "v2", release, "2026-02-01T00:00:00+00:00")
    bad = variant(onnx_bundle, art_dir / "bad", release, "2026-03-01T00:00:00+00:00", scramble=True)
    art = serve_artifacts(art_dir, port=0)
    from edgeslm.telemetry.ota.health import make_reference
    import edgeslm

    with edgeslm.load(v1) as m:
        smoke = make_reference(m, ["The capital of France is"], tokens=8)

    def start(device: str, crash: str | None) -> subprocess.Popen:
        env = dict(os.environ, EDGESLM_MQTT_PASSWORD="pw")
        env.pop("EDGESLM_OTA_CRASH_AT", None)
        if crash:
            env["EDGESLM_OTA_CRASH_AT"] = crash
        return subprocess.Popen([sys.executable, "-m", "edgeslm", "agent", "--bundle", str(v1), "--state-dir",
                                 str(tmp_path / device), "--key", str(pub), "--fleet", fleet_id, "--device", device,
                                 "-u", device, "--broker", f"mqtt://127.0.0.1:{port}", "--http", "off",
                                 "--interval", "0.5", "--threads", "1", "--buffer", str(tmp_path / f"{device}.db")],
                                env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"{device}.log", "ab"))

    procs = {d: start(d, step) for d, step in devices.items()}
    assert wait_for(lambda: all(state(tmp_path / d).get("current") for d in devices), 120, 0.2)
    ops = CommandPublisher(BrokerConfig(port=port, username="operator", password="o-pw"))
    now = time.time()
    health = Health(smoke=smoke, max_ttft_ratio=None, min_tok_s_ratio=None, probation_s=0.5)
    for d in devices:
        target = bad if d == "p-badfail" else v2
        cmd = Command("deploy", f"r1:deploy:{d}", "r1", fleet_id, d, now, now + 3600,
                      {"id": target.name, "url": url_of(art, target.name), "manifest_sha256": manifest_sha(target),
                       "bytes": 0}, health)
        ops.publish(command_topic(fleet_id, d), sign(cmd, release))
    try:
        for d, p in procs.items():  # every one dies at its step, by SIGKILL
            assert p.wait(120) == -signal.SIGKILL, (d, (tmp_path / f"{d}.log").read_text()[-1500:])
            # complete and verified (the bad bundle too: it is signed and whole, only its answers are wrong)
            assert current_verifies(tmp_path / d, pub) in {manifest_sha(b) for b in (v1, v2, bad)}, d
        # the crash loop: the new bundle "kills" the agent at every start while on trial
        for boot in range(3):
            p = start("p-loop", "trial_boot")
            assert p.wait(120) == -signal.SIGKILL, (tmp_path / "p-loop.log").read_text()[-1500:]
            assert state(tmp_path / "p-loop")["trial"]["boots"] == boot + 1
        procs = {d: start(d, "trial_boot" if d == "p-loop" else None) for d in devices}  # power back on
        expect = {d: manifest_sha(v1) if d in ("p-badfail", "p-loop") else manifest_sha(v2) for d in devices}

        def settled(d: str) -> bool:
            s = state(tmp_path / d)
            return not s.get("job") and not s.get("trial") and s["slots"][s["current"]]["manifest_sha256"] == expect[d]

        assert wait_for(lambda: all(settled(d) for d in devices), 180, 0.3), \
            {d: (state(tmp_path / d).get("job") or {}).get("step") for d in devices}
        for d in devices:
            assert current_verifies(tmp_path / d, pub) == expect[d], d
            assert procs[d].poll() is None, (d, (tmp_path / f"{d}.log").read_text()[-1500:])  # running, on it
        assert "r1:deploy:p-loop" in state(tmp_path / "p-loop")["done"]
    finally:
        ops.close()
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        art.shutdown()
