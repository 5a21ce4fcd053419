"""Online/offline is decided by broker arrival, not device clocks; the offline alert does not flap;
device text cannot break the views (issue 13)."""

from __future__ import annotations

import json
import time

import pytest

from edgeslm.cli import main
from edgeslm.telemetry import schema, topics
from edgeslm.telemetry.agent import Agent, AgentConfig
from edgeslm.telemetry.alerts import AlertRules
from edgeslm.telemetry.collector import Collector, CollectorConfig
from edgeslm.telemetry.stores import open_store
from edgeslm.telemetry.stores.base import DeviceRow
from edgeslm.telemetry.views import online_text

from .helpers import wait_for
from .test_resilience import end_session
from .test_security import publish_all

pytestmark = pytest.mark.mqtt
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def store_for(backend, tmp_path, request):
    url = request.getfixturevalue("pg_url") if backend == "postgres" else f"sqlite:///{tmp_path}/f.db"
    return url, open_store(url)


def start(broker, fleet, store, **kw):
    col = Collector(CollectorConfig(broker=broker, fleet=fleet, group=f"g-{fleet}", client_id=f"c-{fleet}",
                                    session_expiry_s=60, batch_wait_s=0.02, **kw), store).start()
    assert col.wait_connected(30) and col.subscribe_error is None
    return col


def crash(agent: Agent) -> None:
    """The device dies: no DISCONNECT, the socket just closes (the broker then publishes the last will)."""
    agent._stopping.set()
    client = agent._client
    client.loop_stop()
    client.socket().close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_last_will_marks_a_crashed_device_offline(backend, system_broker, fleet_id, tmp_path, request):
    """The will is written at connect time, so its ts is older than the 'connected' status after it."""
    _, store = store_for(backend, tmp_path, request)
    col = start(system_broker, fleet_id, store)
    agent = Agent(AgentConfig(fleet_id, "dev-w", system_broker, interval_s=3600)).start()
    try:
        assert agent.wait_connected(30)
        assert wait_for(lambda: [(d.online, d.reason) for d in store.devices(fleet_id)] == [(True, "connected")], 30)
        time.sleep(0.05)  # the will's ts (connect time) is now clearly older than the 'connected' status
        crash(agent)
        assert wait_for(lambda: [(d.online, d.reason) for d in store.devices(fleet_id)] == [(False, "lost")], 30), \
            store.devices(fleet_id)
        (row,) = store.devices(fleet_id)
        assert row.status_ts < row.status_received_at  # ordered by arrival although the will's ts is old
    finally:
        col.stop()
        end_session(system_broker, col.config.client_id)
        store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_far_future_status_does_not_pin_a_device_online(backend, system_broker, fleet_id, tmp_path, request):
    _, store = store_for(backend, tmp_path, request)
    col = start(system_broker, fleet_id, store)
    t = topics.topic(fleet_id, "dev-f", "status")
    future = schema.status_body(fleet_id, "dev-f", 4.0e9, True, "connected")  # year 2096: valid, but wrong
    try:
        publish_all(system_broker, f"p-{fleet_id}", [(t, schema.encode(future))])
        assert wait_for(lambda: [d.online for d in store.devices(fleet_id)] == [True], 30)
        offline = schema.status_body(fleet_id, "dev-f", time.time(), False, "lost")
        publish_all(system_broker, f"p2-{fleet_id}", [(t, schema.encode(offline))])
        assert wait_for(lambda: [(d.online, d.reason) for d in store.devices(fleet_id)] == [(False, "lost")], 30)
    finally:
        col.stop()
        end_session(system_broker, col.config.client_id)
        store.close()
    # staleness is judged by the collector's clock too: a future device ts does not look fresh
    row = DeviceRow("f", "d", online=True, last_seen=4.0e9, last_received_at=time.time() - 600)
    assert online_text(row, stale_after_s=60) == "stale"


def test_the_offline_alert_fires_once_for_a_silent_device(system_broker, fleet_id, tmp_path):
    """The collector's own alert event comes back on the device's events topic: it is not the device talking."""
    store = open_store(f"sqlite:///{tmp_path}/f.db")
    col = start(system_broker, fleet_id, store, alerts=AlertRules(offline_after_s=0.5), alert_every_s=0.1)
    try:
        t = topics.topic(fleet_id, "dev-s", "telemetry")
        publish_all(system_broker, f"p-{fleet_id}", [(t, schema.encode(schema.telemetry_body(
            fleet_id, "dev-s", 0, time.time(), 1.0, {}, {})))])
        assert wait_for(lambda: col.stats.alerts >= 1, 30)
        time.sleep(4.0)  # eight offline periods: a flapping rule would fire and resolve several times
    finally:
        col.stop()
        end_session(system_broker, col.config.client_id)
    names = [e["name"] for e in store.events(fleet_id, "dev-s")]
    assert names == ["alert.firing"] and col.stats.alerts == 1, names
    store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_device_text_cannot_break_the_views(backend, system_broker, fleet_id, tmp_path, request, capsys):
    url, store = store_for(backend, tmp_path, request)
    col = start(system_broker, fleet_id, store)
    markup, esc = "[/bold][red]x[/]", "\x1b]0;pwned\x07\x1b[31m"
    tel = schema.telemetry_body(fleet_id, "dev-m", 0, time.time(), 1.0, {}, {"edgeslm.bundle.id": markup + esc})
    status = schema.status_body(fleet_id, "dev-m", time.time(), False, "[/]" + esc)
    event = schema.event_body(fleet_id, "dev-m", time.time(), "[bold]x", "[/]", markup + esc, "id-1", "agent")
    try:
        publish_all(system_broker, f"p-{fleet_id}", [(topics.topic(fleet_id, "dev-m", k), schema.encode(b))
                                                    for k, b in (("telemetry", tel), ("status", status),
                                                                 ("events", event))])
        assert wait_for(lambda: store.telemetry_count(fleet_id) == 1 and col.stats.events == 1
                        and col.stats.status == 1, 30), col.stats
    finally:
        col.stop()
        end_session(system_broker, col.config.client_id)
        store.close()
    for argv in (["fleet", "status", "--db", url, "--fleet", fleet_id], ["fleet", "device", "dev-m", "--db", url],
                 ["fleet", "events", "--db", url, "--fleet", fleet_id]):
        code = main(argv)
        out = capsys.readouterr()
        assert code == 0, out.err
        assert "\x1b" not in out.out and "\x07" not in out.out  # no terminal escape reaches the terminal
        assert "[/" in out.out  # the markup is shown as the text it is
    assert main(["fleet", "status", "--db", url, "--fleet", fleet_id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["devices"][0]["model_id"] == markup + esc  # data kept as sent


def test_an_old_store_with_absurd_timestamps_still_renders(tmp_path, capsys):
    """Rows written before ingest validation (ts 1e300, text in number columns) print, never crash."""
    url = f"sqlite:///{tmp_path}/old.db"
    store = open_store(url)
    cols = ("fleet", "device", "seq", "ts", "received_at", "model_id", "requests", "errors", "cpu", "payload")
    store.conn.execute(f"INSERT INTO telemetry ({', '.join(cols)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       ("f", "d", 0, 1e300, 1e300, "[/x]", "many", "3", "hot", "{}"))
    store.conn.execute("INSERT INTO devices (fleet, device, online, reason, last_seen, errors, requests, cpu) "
                       "VALUES ('f', 'd', 1, 'x', 1e300, 'three', 2, 'hot')")
    store.conn.execute("INSERT INTO events VALUES ('e', 'f', 'd', 1e300, 0, '[/]', 'x', 's', 'm', '{}')")
    store.conn.commit()
    store.close()
    for argv, shown in ((["fleet", "device", "d", "--db", url], "1e+300"), (["fleet", "status", "--db", url], "three"),
                        (["fleet", "events", "--db", url], "[/]")):
        code = main(argv)
        out = capsys.readouterr()
        assert code == 0 and shown in out.out, (argv, out.out, out.err)
