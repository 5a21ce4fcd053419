"""agent -> real Mosquitto -> collector -> SQLite / PostgreSQL, plus the agent's HTTP endpoint."""

from __future__ import annotations

import json
import urllib.request

import pytest

from edgeslm.telemetry import schema
from edgeslm.telemetry.agent import Agent, AgentConfig
from edgeslm.telemetry.collector import Collector, CollectorConfig
from edgeslm.telemetry.serve import serve
from edgeslm.telemetry.stores import open_store

from .helpers import wait_for
from .fakes import FakeModel

pytestmark = pytest.mark.mqtt


def collector_for(broker, fleet, store, **kw):
    cfg = CollectorConfig(broker=broker, fleet=fleet, group=f"g-{fleet}", client_id=f"c-{fleet}",
                          session_expiry_s=60, batch_wait_s=0.02, **kw)
    col = Collector(cfg, store).start()
    assert col.wait_connected(30), "collector did not connect/subscribe"
    assert col.subscribe_error is None
    return col


def run_roundtrip(broker, fleet, store, tmp_path):
    col = collector_for(broker, fleet, store)
    model = FakeModel(fail_on="boom")
    agent = Agent(AgentConfig(fleet, "dev-1", broker, interval_s=3600, buffer_path=tmp_path / "buf.db"), model)
    agent.start()
    try:
        assert agent.wait_connected(30)
        for _ in range(3):
            agent.generate("the edge device", max_new_tokens=5, stop_on_eos=False)
        with pytest.raises(Exception):
            agent.generate("boom")
        agent.flush()
        for _ in range(4):
            agent.generate("a small model", max_new_tokens=3, stop_on_eos=False)
            agent.flush()
        assert agent.wait_drained(30), agent.stats()
    finally:
        agent.stop(drain_timeout=30)
    assert wait_for(lambda: store.telemetry_count(fleet) == 6 and
                    (store.devices(fleet) or [None])[0] and store.devices(fleet)[0].online is False, 30)
    col.stop()
    hist = store.history(fleet, "dev-1", 10)
    assert [r["seq"] for r in hist] == [5, 4, 3, 2, 1, 0]  # 5 flushes + the final one on stop
    first = hist[-1]
    assert (first["requests"], first["errors"], first["input_tokens"], first["output_tokens"]) == (3, 1, 9, 15)
    assert first["ttft_p95_s"] > 0 and first["model_id"] == "fake-cycle"
    payload = json.loads(open_payload(store, fleet))
    assert payload["schema_version"] == schema.SCHEMA_VERSION and schema.CPU in payload["metrics"]
    (dev,) = store.devices(fleet)
    assert (dev.online, dev.reason, dev.last_seq) == (False, "shutdown", 5)
    assert col.stats.dead == {} and col.stats.duplicates == 0


def open_payload(store, fleet):
    if hasattr(store, "telemetry") and isinstance(store.telemetry, dict):
        return next(iter(store.telemetry.values()))["payload"]
    return store._query("SELECT payload FROM telemetry WHERE fleet = ? ORDER BY seq LIMIT 1", (fleet,))[0][0]


def test_roundtrip_sqlite(system_broker, fleet_id, tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/fleet.db")
    run_roundtrip(system_broker, fleet_id, store, tmp_path)
    store.close()


@pytest.mark.postgres
def test_roundtrip_postgres(system_broker, fleet_id, tmp_path, pg_url):
    store = open_store(pg_url)
    run_roundtrip(system_broker, fleet_id, store, tmp_path)
    store.close()


def test_agent_http_endpoint_is_measured(system_broker, fleet_id, tmp_path):
    store = open_store("memory://")
    col = collector_for(system_broker, fleet_id, store)
    agent = Agent(AgentConfig(fleet_id, "dev-h", system_broker, interval_s=3600), FakeModel()).start()
    server = serve(agent, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        req = urllib.request.Request(f"{url}/generate", data=json.dumps(
            {"prompt": "the edge", "max_new_tokens": 3, "stop_on_eos": False}).encode())
        reply = json.loads(urllib.request.urlopen(req, timeout=10).read())
        assert reply["text"] and reply["metrics"]["output_tokens"] >= 1
        chat = urllib.request.Request(f"{url}/chat", data=json.dumps(
            {"messages": [{"role": "user", "content": "small model"}], "max_new_tokens": 2}).encode())
        assert json.loads(urllib.request.urlopen(chat, timeout=10).read())["finish_reason"]
        bad = urllib.request.Request(f"{url}/generate", data=b"{}")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(bad, timeout=10)
        assert err.value.code == 400
        assert json.loads(urllib.request.urlopen(f"{url}/health", timeout=10).read())["ok"] is True
    finally:
        server.shutdown()
        agent.stop(drain_timeout=30)
    assert wait_for(lambda: store.telemetry_count(fleet_id) == 1, 30)
    col.stop()
    (row,) = store.history(fleet_id, "dev-h")
    assert row["requests"] == 2
