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
