"""`edgeslm fleet rollout` as an operator types it: start (detached), status, pause, resume, abort."""

from __future__ import annotations

import json
import time

import pytest

from edgeslm.cli import main
from edgeslm.telemetry import topics
from edgeslm.telemetry.mqtt import connect, make_client
from edgeslm.telemetry.ota.artifacts import serve_artifacts, url_of
from edgeslm.telemetry.ota.command import verify

from .conftest import clear_retained
from .helpers import wait_for
from .ota_helpers import keys, manifest_sha, variant

pytestmark = pytest.mark.mqtt


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def retained_commands(broker, fleet: str) -> dict[str, bytes]:
    got: dict[str, bytes] = {}
    client = make_client(broker, f"read-{time.time_ns()}")
    client.on_message = lambda c, u, m: got.__setitem__(m.topic.split("/")[3], m.payload) if m.payload else None
    connect(client, broker, clean_start=True, wait=True)
    client.loop_start()
    client.subscribe(topics.fleet_filter(fleet, "commands"), qos=1)
    time.sleep(0.5)
    client.disconnect()
    client.loop_stop()
    return got


def test_rollout_cli_start_status_pause_resume_abort(onnx_bundle, system_broker, fleet_id, tmp_path, capsys):
    key, pub = keys(tmp_path, "release")
    (tmp_path / "art").mkdir()
    v2 = variant(onnx_bundle, tmp_path / "art" / "v2", key, "2026-02-01T00:00:00+00:00")
    variant(onnx_bundle, tmp_path / "art" / "other", key, "2026-04-01T00:00:00+00:00")
    art = serve_artifacts(tmp_path / "art", port=0)
    db = f"sqlite:///{tmp_path}/fleet.db"
    base = ["-b", f"mqtt://127.0.0.1:{system_broker.port}", "--db", db]
    start = ["fleet", "rollout", str(v2), "--fleet", fleet_id, "--key", str(key), "--devices", "a,b,c,d",
             "--canary", "25%", "--stages", "100%", "--detach", "--json"]
    try:
        code, _, err = run(capsys, *start, "--artifact-url", url_of(art, "other"), *base)
        assert code == 1 and err.count("\n") == 1 and "serves another bundle" in err  # checked before anything
        unsigned = [str(onnx_bundle) if a == str(v2) else a for a in start]
        code, _, err = run(capsys, *unsigned, "--artifact-url", url_of(art, "v2"), *base)
        assert code == 1 and err.count("\n") == 1 and "keys sign" in err  # every device would refuse it
        code, out, err = run(capsys, *start, "--artifact-url", url_of(art, "v2"), *base)
        assert code == 0, err
        r = json.loads(out)["rollout"]
        rid = r["id"]
        assert rid == f"{fleet_id}.{manifest_sha(v2)[:12]}" and r["state"] == "running"
        sent = wait_for(lambda: retained_commands(system_broker, fleet_id), 10)
        assert len(sent) == 1  # the canary: 25 % of 4
        (device, payload), = sent.items()
        cmd = verify(payload, [pub], fleet_id, device)
        assert cmd.action == "deploy" and cmd.bundle["manifest_sha256"] == manifest_sha(v2)
        assert len(cmd.health.smoke) == 2 and cmd.health.min_top1_agreement == 0.9

        code, out, _ = run(capsys, *start, "--artifact-url", url_of(art, "v2"), *base)  # again: the same rollout
        assert code == 0 and json.loads(out)["rollout"]["created_at"] == r["created_at"]
        code, out, _ = run(capsys, "fleet", "rollout", "pause", rid, *base)
        assert code == 0
        code, out, _ = run(capsys, "fleet", "rollout", "status", rid, "--db", db, "--json")
        assert json.loads(out)["rollout"]["state"] == "paused"
        code, out, _ = run(capsys, "fleet", "rollout", "status", "--db", db)
        assert rid in out and "paused" in out
        code, _, err = run(capsys, "fleet", "rollout", "resume", rid, *base)
        assert code == 2 and "--key" in err  # resuming publishes: it needs the key
        code, out, err = run(capsys, "fleet", "rollout", "abort", rid, "--key", str(key), "--detach", *base)
        assert code == 0 and "aborting" in out, err  # the rollback is out; no device has confirmed yet
        code, out, _ = run(capsys, "fleet", "rollout", "status", rid, "--db", db, "--json")
        doc = json.loads(out)
        assert doc["rollout"]["state"] == "aborting"
        assert {d["state"] for d in doc["devices"] if d["device"] != device} == {"cancelled"}
        rollback = verify(retained_commands(system_broker, fleet_id)[device], [pub], fleet_id, device)
        assert rollback.action == "rollback" and rollback.rollout == rid
        code, _, err = run(capsys, "fleet", "rollout", "status", "nope", "--db", db)
        assert code == 1 and "no rollout" in err
    finally:
        art.shutdown()
        clear_commands(system_broker, fleet_id)


def clear_commands(broker, fleet: str) -> None:
    client = make_client(broker, f"clear-{time.time_ns()}")
    connect(client, broker, clean_start=True, wait=True)
    client.loop_start()
    for device in "abcd":
        client.publish(topics.topic(fleet, device, "commands"), b"", qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()
    clear_retained(broker, fleet)
