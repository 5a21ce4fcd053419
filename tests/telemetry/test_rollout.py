"""A staged rollout to 20 real agents on a real broker with dynamic-security rules (in one process).

Each device is the real agent (Agent + Deployer: A/B slots, HTTP download, signature and hash
checks, health check on its own onnxruntime engine) with a tiny ONNX bundle; a collector stores
their telemetry and ota.* events in SQLite; the controller reads them from there. Three
rollouts in a row: a good bundle reaches every device; a bundle that fails the health check on
the canary stops there and the canary devices are back on the previous bundle; commands signed
with a key the devices do not trust are refused by all 20. Nothing the agents sent is missing
from the store at the end.
"""

from __future__ import annotations

import time

import pytest

import edgeslm
from edgeslm.telemetry.agent import Agent, AgentConfig
from edgeslm.telemetry.collector import Collector, CollectorConfig
from edgeslm.telemetry.mqtt import BrokerConfig
from edgeslm.telemetry.ota.artifacts import serve_artifacts, url_of
from edgeslm.telemetry.ota.controller import Controller, RolloutSpec
from edgeslm.telemetry.ota.device import Deployer
from edgeslm.telemetry.ota.health import make_reference
from edgeslm.telemetry.ota.publish import CommandPublisher
from edgeslm.telemetry.stores import open_store

from .helpers import wait_for
from .ota_helpers import keys, manifest_sha, variant

pytestmark = pytest.mark.mqtt
N = 20
# speed checks are on, but loose: 20 agents share 2 busy cores here, timings are noise
LOOSE = {"max_ttft_ratio": 50.0, "min_tok_s_ratio": 0.02, "probation_s": 0.3}


def _spec(fleet, art, name, sha, smoke, stages, **health):
    return RolloutSpec(fleet=fleet, bundle={"id": name, "url": url_of(art, name), "manifest_sha256": sha, "bytes": 0},
                       stages=stages, max_failures="0", stage_timeout_s=60.0,
                       health={"smoke": smoke, "min_top1_agreement": 0.9, **LOOSE, **health})


@pytest.fixture
def fleet(onnx_bundle, mosquitto_factory, fleet_id, tmp_path):
    devices = [f"d{i:02d}" for i in range(N)]
    users = {"collector": "c-pw", "operator": "o-pw", **{d: f"{d}-pw" for d in devices}}
    files = mosquitto_factory(users=users, fleet=fleet_id).files
    release, release_pub = keys(tmp_path, "release")
    rogue, _ = keys(tmp_path, "rogue")
    art_dir = tmp_path / "artifacts"
    art_dir.mkdir()
    v1 = variant(onnx_bundle, art_dir / "v1", release, "2026-01-01T00:00:00+00:00")
    v2 = variant(onnx_bundle, art_dir / "v2", release, "2026-02-01T00:00:00+00:00")
    bad = variant(onnx_bundle, art_dir / "bad", release, "2026-03-01T00:00:00+00:00", scramble=True)
    art = serve_artifacts(art_dir, port=0)
    store = open_store(f"sqlite:///{tmp_path}/fleet.db")
    col = Collector(CollectorConfig(broker=BrokerConfig(port=files.port, username="collector", password="c-pw"),
                                    fleet=fleet_id, group="g", client_id=f"c-{fleet_id}"), store).start()
    assert col.wait_connected(30) and col.subscribe_error is None
    agents = []
    for d in devices:
        broker = BrokerConfig(port=files.port, username=d, password=f"{d}-pw")
        agent = Agent(AgentConfig(fleet_id, d, broker, interval_s=1.0, buffer_path=tmp_path / f"{d}.db"))
        dep = Deployer(tmp_path / "state" / d, [release_pub],
                       lambda p: edgeslm.load(p, engine_options={"threads": 1}, trusted_keys=[release_pub]),
                       agent.event, fleet_id, d)
        agent.attach(dep.boot(v1))
        agent.use_deployer(dep)
        agent.start()
        dep.start()
        agents.append((agent, dep))
    assert all(a.wait_connected(30) for a, _ in agents)
    pub = CommandPublisher(BrokerConfig(port=files.port, username="operator", password="o-pw"))
    ctx = dict(store=store, col=col, agents=agents, art=art, v1=v1, v2=v2, bad=bad, release=release, rogue=rogue,
               pub=pub, fleet=fleet_id)
    try:
        yield ctx
    finally:
        pub.close()
        for agent, dep in agents:
            dep.stop()
            if agent._thread is not None:
                agent.stop(drain_timeout=1)
            agent.model.close()
        col.stop()
        art.shutdown()
        store.close()


def running(dep) -> str:
    return dep.slots.info(dep.slots.current).get("manifest_sha256")


def test_rollout_to_20_agents_good_bad_and_forged(fleet):
    f = fleet
    store, fid, agents = f["store"], f["fleet"], f["agents"]
    v1, v2 = manifest_sha(f["v1"]), manifest_sha(f["v2"])
    with edgeslm.load(f["v2"]) as m:
        smoke = make_reference(m, ["The capital of France is", "def fibonacci(n):"], tokens=8)
    ids = [a.config.device for a, _ in agents]
    t0 = time.monotonic()

    # 1. a good bundle: canary (2) -> 50 % -> 100 %, every device on v2, across a controller restart
    first = Controller(store, f["pub"].publish, f["release"])
    first.create("good", _spec(fid, f["art"], "v2", v2, smoke, [0.1, 0.5, 1.0]), ids)
    assert first.run("good", poll_s=0.2, timeout_s=1.0)["state"] == "running"  # then the controller "dies"
    ctl = Controller(store, f["pub"].publish, f["release"])  # a new one carries on from the store
    assert ctl.create("good", _spec(fid, f["art"], "v2", v2, smoke, [1.0]), ids)["spec"]["stages"] == [0.1, 0.5, 1.0]
    r = ctl.run("good", poll_s=0.2, timeout_s=120)
    devs = store.rollout_devices("good")
    assert r["state"] == "completed", (r, [d for d in devs if d["state"] != "succeeded"])  # which device, and why
    assert [d["state"] for d in devs] == ["succeeded"] * N
    assert sorted({d["stage"] for d in devs}) == [0, 1, 2] and sum(d["stage"] == 0 for d in devs) == 2
    assert all(running(dep) == v2 and dep.slots.info(dep.slots.previous)["manifest_sha256"] == v1
               for _, dep in agents)
    assert wait_for(lambda: all(a.resource.get("edgeslm.bundle.sha256") == v2 for a, _ in agents), 10)
    t_good = time.monotonic() - t0

    # 2. a bundle that fails the health check (answers unlike v2): halts at the canary, canary back on v2
    ctl.create("bad", _spec(fid, f["art"], "bad", manifest_sha(f["bad"]), smoke, [0.1, 0.5, 1.0]), ids)
    r = ctl.run("bad", poll_s=0.2, timeout_s=120)
    devs = {d["device"]: d for d in store.rollout_devices("bad")}
    canary = [d for d, row in devs.items() if row["stage"] == 0]
    assert r["state"] == "halted" and len(canary) == 2, (r, devs)
    # the first failure halts the stage at once: a canary device still busy is told to roll back
    assert all(devs[d]["state"] in ("failed", "rolled_back") for d in canary), [devs[d] for d in canary]
    assert any(devs[d]["state"] == "failed" and "agreement" in devs[d]["detail"] for d in canary), [devs[d]["detail"] for d in canary]
    assert all(row["state"] == "pending" for d, row in devs.items() if d not in canary)  # never sent
    assert all(running(dep) == v2 and dep.slots.state["trial"] is None for _, dep in agents)

    # 3. commands signed by a key the devices do not trust: every one of the 20 refuses
    forger = Controller(store, f["pub"].publish, f["rogue"])
    forger.create("forged", _spec(fid, f["art"], "bad", manifest_sha(f["bad"]), smoke, [1.0]), ids)
    r = forger.run("forged", poll_s=0.2, timeout_s=60)
    devs = store.rollout_devices("forged")
    assert r["state"] == "halted" and [d["state"] for d in devs] == ["refused"] * N, devs
    assert all("untrusted" in d["detail"] for d in devs)
    assert all(running(dep) == v2 for _, dep in agents)
    assert store.rollout("good")["state"] == "completed"  # recorded, and still there

    # nothing the agents sent is missing from the store: every seq, telemetry or event
    for agent, dep in agents:
        dep.stop()
        agent.stop(drain_timeout=10)
    col_stats = f["col"].stats
    assert wait_for(lambda: all(_stored_seqs(store, fid, a.config.device) == set(range(a.stats()["last_seq"] + 1))
                                for a, _ in agents), 30)
    assert store.dead_letter_counts() == {} and col_stats.lost == 0
    print(f"good rollout to {N} agents in {t_good:.1f} s; all three in {time.monotonic() - t0:.1f} s")


def _stored_seqs(store, fleet, device) -> set[int]:
    tele = {r["seq"] for r in store.history(fleet, device, limit=100_000)}
    events = {int(e["id"].rsplit(":", 1)[1]) for e in store.events(fleet, device, limit=100_000)
              if e["source"] == "agent"}
    return tele | events
