"""Rollout pieces one at a time: command signatures, the artifact server and resumable download,
health thresholds, and the controller's stages against an in-memory store (no broker)."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from edgeslm.telemetry import schema, topics
from edgeslm.telemetry.ota import health as H
from edgeslm.telemetry.ota.artifacts import serve_artifacts, url_of
from edgeslm.telemetry.ota.command import Command, CommandError, Health, sign, verify
from edgeslm.telemetry.ota.controller import Controller, RolloutSpec, parse_stages
from edgeslm.telemetry.ota.download import Downloader
from edgeslm.telemetry.stores import MemoryStore, open_store
from edgeslm.telemetry.stores.base import Batch

from .ota_helpers import keys

pytest.importorskip("cryptography", reason="cryptography not installed (pip install 'edgeslm[sign]')")
SHA = "ab" * 32


def _cmd(device="d1", action="deploy", expires=None, **kw):
    now = time.time()
    return Command(action, f"r1:{action}", "r1", "f", device, now, expires or now + 60,
                   {"id": "b", "url": "http://127.0.0.1:1/b/", "manifest_sha256": SHA, "bytes": 1} if action == "deploy"
                   else None, Health() if action == "deploy" else None, **kw)


def test_commands_are_refused_unless_signed_for_this_device(tmp_path):
    key, pub = keys(tmp_path, "release")
    rogue, _ = keys(tmp_path, "rogue")
    good = sign(_cmd(), key)
    assert verify(good, [pub], "f", "d1").bundle["manifest_sha256"] == SHA

    def reason(payload, device="d1"):
        with pytest.raises(CommandError) as e:
            verify(payload, [pub], "f", device)
        return e.value.reason

    env = json.loads(good)
    tampered = dict(env, body=env["body"].replace("127.0.0.1:1", "evil.example"))
    assert reason(json.dumps(tampered).encode()) == "signature"
    assert reason(sign(_cmd(), rogue)) == "untrusted"
    assert reason(good, device="d2") == "device"  # another device's command replayed on my topic
    assert reason(sign(_cmd(expires=time.time() - 1), key)) == "expired"
    assert reason(json.dumps(dict(env, signature="")).encode()) == "unsigned"
    for junk in (b"", b"[]", b"{", b'{"kind": "command", "body": 5}', b"x" * 300_000):
        assert reason(junk) in ("malformed", "schema_version")
    err = None
    try:
        verify(sign(_cmd(), rogue), [pub], "f", "d1")
    except CommandError as exc:
        err = exc
    assert (err.rollout, err.command) == ("r1", "r1:deploy")  # reported as claimed, for the refusal event


def test_artifact_server_ranges_and_resumed_download(tmp_path):
    from edgeslm.bundle.manifest import write_manifest

    b = tmp_path / "art" / "bundle"
    b.mkdir(parents=True)
    data = bytes(range(256)) * 4000  # ~1 MB: several reads
    (b / "w.bin").write_bytes(data)
    m = write_manifest(b, {"format": "onnx", "artifacts": {"model": "w.bin"},
                           "spec": {"architecture": "llama", "vocab_size": 8, "hidden_size": 8, "num_layers": 1,
                                    "num_heads": 1, "num_kv_heads": 1, "head_dim": 8, "intermediate_size": 8,
                                    "context_length": 16}})
    import hashlib

    sha = hashlib.sha256((b / "manifest.json").read_bytes()).hexdigest()
    srv = serve_artifacts(tmp_path / "art", port=0)
    try:
        url = url_of(srv, "bundle")
        req = urllib.request.Request(url + "w.bin", headers={"Range": "bytes=10-19"})
        with urllib.request.urlopen(req) as r:
            assert r.status == 206 and r.read() == data[10:20]
            assert r.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
        for bad in ("../../etc/passwd", "%2e%2e/x", "bundle/../../x"):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(url_of(srv) + bad)
            assert e.value.code == 404
        slot = tmp_path / "slot"
        slot.mkdir()
        (slot / "w.bin.part").write_bytes(data[:300_000])  # a download cut off by a power loss
        seen = []
        Downloader(on_chunk=lambda name, done: seen.append((name, done))).fetch(url, slot, sha)
        assert (slot / "w.bin").read_bytes() == data and not (slot / "w.bin.part").exists()
        assert [d for n, d in seen if n == "w.bin.part"][0] > 300_000  # resumed, not restarted
        assert m["files"]["w.bin"]["bytes"] == len(data)
        with pytest.raises(CommandError, match="hash"):  # the manifest is not the signed one
            Downloader(retries=1).fetch(url, tmp_path / "slot2", "cd" * 32)
        (b / "w.bin").write_bytes(data[::-1])  # the server's file was swapped
        with pytest.raises(CommandError, match="sha256"):
            Downloader(retries=1).fetch(url, tmp_path / "slot3", sha)
    finally:
        srv.shutdown()


def test_download_over_https_checks_the_server_certificate(tmp_path):
    from edgeslm.bundle.manifest import write_manifest
    from edgeslm.telemetry.certs import make_test_certs

    b = tmp_path / "art" / "b"
    b.mkdir(parents=True)
    (b / "w.bin").write_bytes(b"weights" * 1000)
    write_manifest(b, {"format": "onnx", "artifacts": {"model": "w.bin"},
                       "spec": {"architecture": "llama", "vocab_size": 8, "hidden_size": 8, "num_layers": 1,
                                "num_heads": 1, "num_kv_heads": 1, "head_dim": 8, "intermediate_size": 8,
                                "context_length": 16}})
    import hashlib

    sha = hashlib.sha256((b / "manifest.json").read_bytes()).hexdigest()
    ca, cert, key = make_test_certs(tmp_path / "certs")
    srv = serve_artifacts(tmp_path / "art", port=0, cert_file=str(cert), key_file=str(key))
    try:
        url = url_of(srv, "b")
        assert url.startswith("https://")
        Downloader(ca_file=str(ca)).fetch(url, tmp_path / "slot", sha)
        assert (tmp_path / "slot" / "w.bin").read_bytes() == b"weights" * 1000
        with pytest.raises(CommandError, match="download"):  # a server this device cannot authenticate
            Downloader(retries=1, backoff_s=0).fetch(url, tmp_path / "slot2", sha)
    finally:
        srv.shutdown()


def test_health_thresholds():
    h = Health(min_top1_agreement=0.9, max_ttft_ratio=2.0, min_tok_s_ratio=0.5)
    base = H.Speed(0.1, 20.0, 5)
    assert H.judge(h, 1.0, 16, H.Speed(0.15, 18.0, 3), base).ok
    assert "agreement" in H.judge(h, 0.5, 16, H.Speed(0.1, 20.0, 3), base).reason
    assert "TTFT" in H.judge(h, 1.0, 16, H.Speed(0.25, 20.0, 3), base).reason
    assert "tok/s" in H.judge(h, 1.0, 16, H.Speed(0.1, 9.0, 3), base).reason
    assert "limit" in H.judge(Health(max_ttft_s=0.05), 1.0, 16, H.Speed(0.1, 20.0, 3), None).reason
    assert H.judge(h, 1.0, 16, H.Speed(0.5, 1.0, 3), None).ok  # no baseline: ratios not applicable


def test_recent_speed_is_the_baseline_once_there_are_enough_requests():
    from types import SimpleNamespace

    recent = H.RecentSpeed(keep=10)
    res = [SimpleNamespace(metrics=SimpleNamespace(time_to_first_token_s=0.1 * k, decode_tokens_per_s=10.0 * k))
           for k in range(1, 13)]
    for r in res[:4]:
        recent.observe("sha-a", r)
    assert recent.speed("sha-a") is None  # 4 < 5 requests: the device measures instead
    for r in res[4:]:
        recent.observe("sha-a", r)
    sp = recent.speed("sha-a")
    assert sp.samples == 10 and sp.ttft_s == pytest.approx(0.75) and sp.tok_s == pytest.approx(75.0)  # last 10
    assert recent.speed("sha-b") is None


def _event(fleet, device, name, rollout, seq, message="x"):
    body = schema.event_seq(schema.event_body(fleet, device, time.time(), name, "info", message, f"{device}:{seq}",
                                              "agent", {"rollout": rollout}), seq)
    return schema.parse(topics.topic(fleet, device, "events"), schema.encode(body), received_at=time.time())


@pytest.mark.parametrize("url", ["memory://", "sqlite", "postgres"])
def test_controller_stages_halts_and_resumes_from_the_store(url, tmp_path, request):
    if url == "sqlite":
        url = f"sqlite:///{tmp_path}/fleet.db"
    elif url == "postgres":
        url = request.getfixturevalue("pg_url")
    store, sent = open_store(url), []
    key, _ = keys(tmp_path, "k")
    devices = [f"d{i}" for i in range(10)]
    spec = RolloutSpec(fleet="f", bundle={"id": "b", "url": "http://x/b/", "manifest_sha256": SHA},
                       stages=parse_stages("10%", "50%,100%"), max_failures="0", stage_timeout_s=60)
    assert spec.stages == [0.1, 0.5, 1.0] and spec.allowed(10) == 0
    assert RolloutSpec(**{**spec.__dict__, "max_failures": "20%"}).allowed(10) == 2
    ctl = Controller(store, lambda t, p: sent.append((t, json.loads(json.loads(p)["body"]))), key)
    r = ctl.create("r1", spec, devices)
    assert ctl.create("r1", spec, devices[:3])["created_at"] == r["created_at"]  # the same rollout, not a new one
    ctl.step("r1")
    canary = [b["device"] for _, b in sent]
    assert len(canary) == 1 and sent[0][1]["action"] == "deploy"
    seq = iter(range(1000))
    store.write(Batch(events=[_event("f", canary[0], "ota.succeeded", "r1", next(seq))]))
    # a new controller (a restart) carries on from the store alone
    ctl2 = Controller(store, lambda t, p: sent.append((t, json.loads(json.loads(p)["body"]))), key)
    r = ctl2.step("r1")
    assert r["stage"] == 1 and len(sent) == 5  # 50 % of 10 = 5 devices so far: 4 new
    stage2 = [b["device"] for _, b in sent[1:]]
    store.write(Batch(events=[_event("f", stage2[0], "ota.succeeded", "r1", next(seq)),
                              _event("f", stage2[1], "ota.failed", "r1", next(seq), "smoke test: agreement 0.1"),
                              _event("f", stage2[2], "ota.healthy", "r1", next(seq)),
                              _event("f", stage2[3], "ota.succeeded", "other-rollout", next(seq))]))
    r = ctl2.step("r1")
    assert r["state"] == "halting"
    rollbacks = {b["device"] for _, b in sent if b["action"] == "rollback"}
    assert rollbacks == {stage2[0], stage2[2], stage2[3]}  # took it (or may have): told to go back
    store.write(Batch(events=[_event("f", d, "ota.rolled_back", "r1", next(seq)) for d in rollbacks]))
    r = ctl2.step("r1")
    assert r["state"] == "halted"
    states = {d["device"]: d["state"] for d in store.rollout_devices("r1")}
    assert states[canary[0]] == "succeeded" and states[stage2[1]] == "failed"
    assert sum(s == "pending" for s in states.values()) == 5  # the last stage never started
    with pytest.raises(Exception, match="halted"):
        ctl2.request("r1", "running")
    assert [r["id"] for r in store.rollouts("f")] == ["r1"] and store.rollout("r1")["unwind_at"]
    store.close()


def test_pause_resume_abort():
    store, sent = MemoryStore(), []
    ctl = Controller(store, lambda t, p: sent.append(json.loads(json.loads(p)["body"])), _key())
    spec = RolloutSpec(fleet="f", bundle={"id": "b", "url": "http://x/b/", "manifest_sha256": SHA}, stages=[0.5, 1.0])
    ctl.create("r2", spec, ["a", "b"])
    ctl.step("r2")
    ctl.request("r2", "paused")
    assert ctl.run("r2", poll_s=0.01)["state"] == "paused"
    ctl.request("r2", "running")
    ctl.request("r2", "aborting")
    r = ctl.step("r2")
    assert r["state"] == "aborting" and [c["action"] for c in sent] == ["deploy", "rollback"]
    r = Controller(store, lambda t, p: None, _key(), clock=lambda: time.time() + 3600).step("r2")
    assert r["state"] == "aborted"  # the device never confirmed: given up on after the stage timeout


def _key():
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.generate()
