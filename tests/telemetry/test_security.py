"""The fleet ACL and TLS listener on our own mosquitto; bad input never stops the collector."""

from __future__ import annotations

import time

import pytest

from edgeslm.telemetry import schema, topics
from edgeslm.telemetry.agent import Agent, AgentConfig
from edgeslm.telemetry.collector import Collector, CollectorConfig
from edgeslm.telemetry.mqtt import BrokerConfig, connect, make_client
from edgeslm.telemetry.stores import open_store

from .helpers import wait_for

pytestmark = pytest.mark.mqtt
USERS = {"collector": "c-pw", "dev-a": "a-pw", "dev-b": "b-pw"}


def publish_all(broker: BrokerConfig, client_id: str, messages: list[tuple[str, bytes]]) -> list:
    """Publish QoS 1 and return the PUBACK reason codes, in order."""
    codes: dict[int, object] = {}
    client = make_client(broker, client_id)
    client.on_publish = lambda c, u, mid, rc, p=None: codes.__setitem__(mid, rc)
    connect(client, broker, clean_start=True, wait=True)
    client.loop_start()
    mids = [client.publish(t, p, qos=1).mid for t, p in messages]
    assert wait_for(lambda: len(codes) == len(mids), 30)
    client.disconnect()
    client.loop_stop()
    return [codes[m] for m in mids]


def connack(broker: BrokerConfig) -> int:
    """The CONNACK reason code the broker answers ``broker``'s credentials with."""
    got: list[int] = []
    client = make_client(broker, f"probe-{time.time_ns()}")
    client.on_connect = lambda c, u, f, rc, p=None: got.append(int(rc.value))
    connect(client, broker, clean_start=True, wait=True)
    client.loop_start()
    wait_for(lambda: got, 30)
    client.disconnect()
    client.loop_stop()
    assert got, "no CONNACK"
    return got[0]


def test_acl_confines_a_device_to_its_own_topics_over_tls(mosquitto_factory, fleet_id, tmp_path):
    from edgeslm.telemetry.broker import free_port

    proc = mosquitto_factory(users=USERS, fleet=fleet_id, tls_port=free_port())
    files = proc.files
    tls = dict(host="127.0.0.1", port=files.tls_port, tls=True, ca_file=str(files.ca_file))
    store = open_store(f"sqlite:///{tmp_path}/fleet.db")
    col = Collector(CollectorConfig(broker=BrokerConfig(**tls, username="collector", password="c-pw"), fleet=fleet_id,
                                    group="g", client_id=f"c-{fleet_id}", session_expiry_s=60), store).start()
    assert col.wait_connected(30) and col.subscribe_error is None
    dev_a = BrokerConfig(**tls, username="dev-a", password="a-pw")
    agent = Agent(AgentConfig(fleet_id, "dev-a", dev_a, interval_s=3600)).start()
    assert agent.wait_connected(30)
    agent.flush()
    assert agent.wait_drained(30)

    now = time.time()
    as_b = schema.encode(schema.telemetry_body(fleet_id, "dev-b", 0, now, 1.0, {}, {}))
    codes = publish_all(dev_a, "rogue-a", [
        (topics.topic(fleet_id, "dev-b", "telemetry"), as_b),  # someone else's topic
        (topics.topic(fleet_id, "dev-b", "status"), b'{"online": false}'),
        (topics.topic(fleet_id, "dev-a", "telemetry"),  # its own topic, naming another device inside
         schema.encode(schema.telemetry_body(fleet_id, "dev-b", 1, now, 1.0, {}, {}))),
    ])
    assert [int(c.value) for c in codes[:2]] == [135, 135]  # MQTT5: "not authorized"
    assert int(codes[2].value) == 0  # allowed on the wire, refused by the collector (payload != topic)

    assert connack(BrokerConfig(**tls, username="dev-a", password="nope")) != 0  # wrong password
    assert connack(BrokerConfig(port=files.port)) != 0  # anonymous
    assert connack(BrokerConfig(port=files.port, username="dev-b", password="b-pw")) == 0

    assert wait_for(lambda: col.stats.dead.get("invalid") == 1, 30)
    agent.stop(drain_timeout=30)
    assert wait_for(lambda: store.telemetry_count(fleet_id) == 2, 30)
    col.stop()
    assert {d.device for d in store.devices(fleet_id)} == {"dev-a"}  # dev-b never stored
    assert store.history(fleet_id, "dev-b") == []


def suback(broker: BrokerConfig, client_id: str, filters: list[str], hold: list | None = None) -> list[int]:
    """Subscribe to each filter (QoS 1) and return the SUBACK reason codes; ``hold`` keeps the client open."""
    codes: dict[int, int] = {}
    client = make_client(broker, client_id)
    client.on_subscribe = lambda c, u, mid, rcs, p=None: codes.__setitem__(mid, int(rcs[0].value))
    connect(client, broker, clean_start=True, wait=True)
    client.loop_start()
    mids = [client.subscribe(f, qos=1)[1] for f in filters]
    assert wait_for(lambda: len(codes) == len(mids), 30)
    if hold is None:
        client.disconnect()
        client.loop_stop()
    else:
        hold.append(client)
    return [codes[m] for m in mids]


def test_a_device_cannot_subscribe_outside_its_own_commands_and_acks(mosquitto_factory, fleet_id, tmp_path):
    """The attack: a device joins the collectors' $share group with several sessions and swallows the
    telemetry of others (Mosquitto 2.0's acl_file never checks SUBSCRIBE). Refused; nothing is lost."""
    proc = mosquitto_factory(users=USERS, fleet=fleet_id)
    port, root = proc.files.port, f"edgeslm/v1/{fleet_id}"
    store = open_store(f"sqlite:///{tmp_path}/fleet.db")
    col = Collector(CollectorConfig(broker=BrokerConfig(port=port, username="collector", password="c-pw"),
                                    fleet=fleet_id, group="edgeslm", client_id=f"c-{fleet_id}", session_expiry_s=60,
                                    batch_wait_s=0.02), store).start()
    assert col.wait_connected(30) and col.subscribe_error is None
    dev_a = BrokerConfig(port=port, username="dev-a", password="a-pw")
    thieves: list = []
    stolen: list = []
    for i in range(4):  # several sessions, as in the attack run
        codes = suback(dev_a, f"thief-{i}", [f"$share/edgeslm/{root}/+/telemetry", f"$share/edgeslm/{root}/+/events",
                                             f"{root}/+/telemetry", f"{root}/dev-b/commands", f"{root}/dev-b/acks",
                                             f"{root}/#", "#", f"$share/x/{root}/dev-a/acks"], hold=thieves)
        assert codes == [135] * 8, codes  # MQTT v5 "not authorized" for every one
        thieves[-1].on_message = lambda c, u, m: stolen.append(m.topic)
    assert suback(dev_a, "own", [f"{root}/dev-a/commands", f"{root}/dev-a/acks"]) == [1, 1]
    # nor can it forge acks or commands for another device (or acks for itself)
    codes = publish_all(dev_a, "forger", [(f"{root}/dev-b/acks", b"{}"), (f"{root}/dev-b/commands", b"{}"),
                                           (f"{root}/dev-a/acks", b"{}"), (f"{root}/dev-a/commands", b"{}")])
    assert [int(c.value) for c in codes] == [135] * 4
    t = topics.topic(fleet_id, "dev-b", "telemetry")
    dev_b = BrokerConfig(port=port, username="dev-b", password="b-pw")
    codes = publish_all(dev_b, "victim", [(t, schema.encode(schema.telemetry_body(fleet_id, "dev-b", i, time.time(),
                                                                                  1.0, {}, {}))) for i in range(200)])
    assert all(int(c.value) == 0 for c in codes)
    assert wait_for(lambda: store.telemetry_count(fleet_id) == 200, 30), store.telemetry_count(fleet_id)
    col.stop()
    for c in thieves:
        c.disconnect()
        c.loop_stop()
    assert stolen == [] and col.stats.received == 200


def test_fleet_acl_script_grants_what_the_docs_say(mosquitto_factory, fleet_id, tmp_path):
    """examples/mosquitto/fleet-acl.sh (mosquitto_ctrl) gives a new device and collector the same rights."""
    import os
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("mosquitto_ctrl") is None:
        pytest.skip("mosquitto_ctrl is not installed (mosquitto-clients)")
    proc = mosquitto_factory(users={"collector": "c-pw"}, fleet=fleet_id, admin=("admin", "admin-pw"))
    port, root = proc.files.port, f"edgeslm/v1/{fleet_id}"
    script = Path(__file__).resolve().parents[2] / "examples" / "mosquitto" / "fleet-acl.sh"
    env = dict(os.environ, MOSQUITTO_CTRL=f"-h 127.0.0.1 -p {port} -u admin -P admin-pw")
    for args, password in ((["defaults"], None), (["collector", fleet_id, "col-2"], "c2-pw"),
                           (["device", fleet_id, "dev-new"], "new-pw")):
        run = subprocess.run(["sh", str(script), *args], env=dict(env, PASSWORD=password or ""), capture_output=True,
                             text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
    dev = BrokerConfig(port=port, username="dev-new", password="new-pw")
    assert suback(dev, "n1", [f"{root}/dev-new/commands", f"{root}/dev-new/acks",
                              f"$share/edgeslm/{root}/+/telemetry", f"{root}/+/telemetry"]) == [1, 1, 135, 135]
    codes = publish_all(dev, "n2", [(f"{root}/dev-new/telemetry", b"{}"), (f"{root}/dev-new/status", b"{}"),
                                    (f"{root}/dev-new/events", b"{}"), (f"{root}/other/telemetry", b"{}"),
                                    (f"{root}/dev-new/acks", b"{}")])
    assert [int(c.value) for c in codes] == [16, 16, 16, 135, 135]  # 16: allowed, nobody subscribed yet
    col = BrokerConfig(port=port, username="col-2", password="c2-pw")
    assert suback(col, "c1", [f"$share/g/{root}/+/telemetry", f"{root}/+/status", "#"]) == [1, 1, 135]
    codes = publish_all(col, "c2", [(f"{root}/dev-new/acks", b"{}"), (f"{root}/dev-new/telemetry", b"{}")])
    assert [int(c.value) for c in codes] == [16, 135]


def test_bad_messages_are_counted_and_the_collector_keeps_going(system_broker, fleet_id, tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/fleet.db")
    col = Collector(CollectorConfig(broker=system_broker, fleet=fleet_id, group="g", client_id=f"c-{fleet_id}",
                                    session_expiry_s=60, max_payload_bytes=4096), store).start()
    assert col.wait_connected(30)
    t = topics.topic(fleet_id, "dev-x", "telemetry")
    good = [schema.encode(schema.telemetry_body(fleet_id, "dev-x", i, time.time(), 1.0, {}, {})) for i in range(3)]
    v2 = schema.telemetry_body(fleet_id, "dev-x", 9, time.time(), 1.0, {}, {})
    v2["schema_version"] = 99
    bad = [b"{oops", b"\xff\xfe", b"[]", schema.encode(v2), b'{"schema_version": 1}', b"{" + b" " * 5000 + b"}"]
    publish_all(system_broker, f"p-{fleet_id}", [(t, good[0])] + [(t, b) for b in bad] + [(t, g) for g in good[1:]]
                + [(topics.topic(fleet_id, "dev-x", "events"), b'{"schema_version": 1, "kind": "event"}')])
    assert wait_for(lambda: store.telemetry_count(fleet_id) == 3 and sum(col.stats.dead.values()) == 7, 30), \
        col.stats
    assert col.stats.dead == {"malformed_json": 3, "schema_version": 1, "invalid": 2, "oversized": 1}
    assert store.dead_letter_counts() == dict(col.stats.dead)
    col.stop()
