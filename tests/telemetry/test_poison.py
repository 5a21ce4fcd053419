"""One bad message never stops collection (issue 13): real broker, SQLite and PostgreSQL.

Each test publishes through Mosquitto to a real collector; a valid message sent afterwards
must be stored, the bad one must be a dead letter with its reason, and nothing may wedge,
kill a thread silently, or come back after a restart.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import pytest

from edgeslm.telemetry import schema, topics
from edgeslm.telemetry.collector import Collector, CollectorConfig
from edgeslm.telemetry.stores import MemoryStore, open_store

from .helpers import wait_for
from .test_resilience import end_session
from .test_security import publish_all

pytestmark = pytest.mark.mqtt


def good(fleet, device="dev-ok", seq=0, **over):
    body = schema.telemetry_body(fleet, device, seq, time.time(), 1.0, {
        schema.TTFT: {"count": 1, "sum": 0.1, "p50": 0.1, "p95": 0.1, "max": 0.1},
        schema.TOKEN_USAGE: {"input": 3, "output": 4}, schema.CPU: 0.5}, {"edgeslm.bundle.id": "m"})
    body.update(over)
    return body


def poison_cases(fleet):
    """(topic kind, payload, expected dead-letter reason): what the attack run wedged the collector with."""
    t = "telemetry"
    ttft = {"count": 1, "sum": 0.1, "p50": 0.1, "p95": 0.1, "max": 0.1}
    deep = b'{"schema_version":1,"kind":"telemetry","fleet":"%s","device":"dev-x","ts":1,"seq":1,"metrics":{},' \
           b'"x":' % fleet.encode() + b"[" * 5000 + b"]" * 5000 + b"}"
    status = schema.status_body(fleet, "dev-x", time.time(), True, "connected")
    event = schema.event_body(fleet, "dev-x", time.time(), "n", "info", "m", "id-1", "agent")
    cases = [
        (t, good(fleet, "dev-x", 2**64), "invalid"),  # seq beyond 64 bit
        (t, good(fleet, "dev-x", 1, metrics={schema.TOKEN_USAGE: {"input": 2**70, "output": 1}}), "invalid"),
        (t, good(fleet, "dev-x", 2, metrics={schema.TTFT: dict(ttft, count=2**63)}), "invalid"),
        (t, good(fleet, "dev-x", 3, resource={"edgeslm.bundle.id": {"nested": "object"}}), "invalid"),
        (t, good(fleet, "dev-x", 4, metrics={schema.CPU: [0.5]}), "invalid"),
        (t, good(fleet, "dev-x", 5, resource={"edgeslm.bundle.id": "a\u0000b"}), "invalid"),  # NUL: PostgreSQL
        (t, good(fleet, "dev-x", 6, resource={"host.name": "\ud800"}), "invalid"),  # lone surrogate
        (t, good(fleet, "dev-x", 7, agent={"x": [[[[[[[[[[[1]]]]]]]]]]]}), "invalid"),  # 11 deep
        (t, deep, "malformed_json"),  # kills a recursive decoder
        (t, good(fleet, "dev-x", 8, ts=1e300), "invalid"),
        (t, good(fleet, "dev-x", 9, metrics={schema.ERRORS: {"total": "3"}}), "invalid"),
        (t, good(fleet, "dev-x", 10, schema_version=0), "schema_version"),
        (t, good(fleet, "dev-x", 11, schema_version=-1), "schema_version"),
        (t, good(fleet, "dev-x", 12, schema_version=True), "schema_version"),
        ("status", dict(status, reason={"[bold]": "x"}), "invalid"),
        ("status", dict(status, ts=1e300), "invalid"),
        ("events", dict(event, message={"x": 1}), "invalid"),
        ("events", dict(event, attributes={"n": 2**70}), "invalid"),
    ]
    out = []
    for kind, body, reason in cases:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        out.append((topics.topic(fleet, "dev-x", kind), payload, reason))
    return out


def collector(broker, fleet, store, **kw):
    kw.setdefault("batch_wait_s", 0.05)
    col = Collector(CollectorConfig(broker=broker, fleet=fleet, group=f"g-{fleet}", client_id=f"c-{fleet}",
                                    session_expiry_s=60, **kw), store).start()
    assert col.wait_connected(30) and col.subscribe_error is None
    return col


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_bad_values_are_dead_letters_and_collection_goes_on(backend, system_broker, fleet_id, tmp_path, request):
    url = request.getfixturevalue("pg_url") if backend == "postgres" else f"sqlite:///{tmp_path}/f.db"
    store = open_store(url)
    col = collector(system_broker, fleet_id, store)
    cases = poison_cases(fleet_id)
    try:
        t = topics.topic(fleet_id, "dev-ok", "telemetry")
        publish_all(system_broker, f"p-{fleet_id}", [(t, schema.encode(good(fleet_id, seq=0)))]
                    + [(topic, payload) for topic, payload, _ in cases]
                    + [(t, schema.encode(good(fleet_id, seq=1)))])
        assert wait_for(lambda: store.telemetry_count(fleet_id) == 2 and sum(col.stats.dead.values()) == len(cases),
                        30), (store.telemetry_count(fleet_id), col.stats)
        assert col.error is None and col.stats.store_errors == 0  # refused before the store, not by it
        expected: dict[str, int] = {}
        for _, _, reason in cases:
            expected[reason] = expected.get(reason, 0) + 1
        assert dict(col.stats.dead) == expected and store.dead_letter_counts() == expected
        assert [r["seq"] for r in store.history(fleet_id, "dev-ok")] == [1, 0]
    finally:
        col.stop()
        end_session(system_broker, col.config.client_id)
        store.close()


def _refuse_device(url: str, store, device: str, sqlstate: str = "check_violation") -> None:
    """A real database that refuses one device's telemetry rows (the data is at fault, not the store)."""
    if url.startswith("sqlite"):
        store.conn.execute(f"CREATE TRIGGER poison BEFORE INSERT ON telemetry WHEN NEW.device = '{device}' "
                           "BEGIN SELECT RAISE(ABORT, 'refused by trigger'); END")
        store.conn.commit()
        return
    with store.conn.cursor() as cur:
        cur.execute("CREATE OR REPLACE FUNCTION poison() RETURNS trigger AS $$ BEGIN "
                    f"IF NEW.device = '{device}' OR '{device}' = '*' THEN "
                    f"RAISE EXCEPTION 'refused by trigger' USING ERRCODE = '{sqlstate}'; END IF; RETURN NEW; END "
                    "$$ LANGUAGE plpgsql")
        cur.execute("DROP TRIGGER IF EXISTS poison ON telemetry")
        cur.execute("CREATE TRIGGER poison BEFORE INSERT ON telemetry FOR EACH ROW EXECUTE FUNCTION poison()")
    store.conn.commit()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_batch_the_store_refuses_is_bisected(backend, system_broker, fleet_id, tmp_path, request):
    """The store itself refuses one message of a 41-message batch: only that one becomes a dead letter."""
    url = request.getfixturevalue("pg_url") if backend == "postgres" else f"sqlite:///{tmp_path}/f.db"
    store = open_store(url)
    _refuse_device(url, store, "dev-poison")
    col = collector(system_broker, fleet_id, store, batch_wait_s=1.0)
    msgs = [(topics.topic(fleet_id, "dev-ok", "telemetry"), schema.encode(good(fleet_id, seq=i))) for i in range(40)]
    msgs.insert(17, (topics.topic(fleet_id, "dev-poison", "telemetry"),
                     schema.encode(good(fleet_id, "dev-poison", seq=0))))
    try:
        publish_all(system_broker, f"p-{fleet_id}", msgs)
        assert wait_for(lambda: store.telemetry_count(fleet_id) == 40 and col.stats.dead.get("store") == 1, 30), \
            col.stats
        assert col.error is None and 1 <= col.stats.store_errors <= 12  # ~log2(41) splits, not a retry loop
        assert store.dead_letter_counts() == {"store": 1}
        detail = store._query("SELECT detail, topic FROM dead_letters")[0]
        assert "refused by trigger" in detail[0] and detail[1].endswith("/dev-poison/telemetry")
    finally:
        col.stop()
    # restart with the same session: the poison was acknowledged, so nothing comes back
    col = collector(system_broker, fleet_id, store)
    time.sleep(1.0)
    col.stop()
    end_session(system_broker, col.config.client_id)
    assert col.stats.received == 0 and store.telemetry_count(fleet_id) == 40
    store.close()


class _BrokenStore(MemoryStore):
    """A store whose failure handling itself fails: the writer thread cannot go on."""

    def write(self, batch):
        raise ValueError("bad write")

    def healthy(self):
        raise RuntimeError("disk on fire")


def test_the_writer_cannot_die_silently_and_restarts_cleanly(system_broker, fleet_id):
    col = collector(system_broker, fleet_id, _BrokenStore())
    t = topics.topic(fleet_id, "dev-ok", "telemetry")
    publish_all(system_broker, f"p-{fleet_id}", [(t, schema.encode(good(fleet_id, seq=i))) for i in range(3)])
    assert wait_for(lambda: col.error, 30)
    assert "writer" in col.error and "disk on fire" in col.error
    with pytest.raises(Exception, match="stopped working"):
        col.check()
    col.stop()
    store = MemoryStore()  # the same session, a working store: everything comes again, once
    col = collector(system_broker, fleet_id, store)
    try:
        assert wait_for(lambda: store.telemetry_count(fleet_id) == 3, 30), col.stats
        assert col.error is None
    finally:
        col.stop()
        end_session(system_broker, col.config.client_id)


@pytest.mark.postgres
def test_stop_works_while_the_store_is_failing(system_broker, fleet_id, pg_url):
    store = open_store(pg_url)
    _refuse_device(pg_url, store, "*", sqlstate="57P01")  # admin_shutdown: "the database is unavailable"
    col = collector(system_broker, fleet_id, store)
    t = topics.topic(fleet_id, "dev-ok", "telemetry")
    publish_all(system_broker, f"p-{fleet_id}", [(t, schema.encode(good(fleet_id, seq=i))) for i in range(5)])
    assert wait_for(lambda: col.stats.store_errors >= 2, 30), col.stats
    t0 = time.monotonic()
    col.stop()
    assert time.monotonic() - t0 < 3.0  # no retry loop holds it
    assert store.telemetry_count(fleet_id) == 0 and col.stats.dead == {}  # nothing given up on, nothing acked
    with store.conn.cursor() as cur:
        cur.execute("DROP TRIGGER poison ON telemetry")
    store.conn.commit()
    col = collector(system_broker, fleet_id, store)  # the database is back: the broker redelivers all 5
    try:
        assert wait_for(lambda: store.telemetry_count(fleet_id) == 5, 30), col.stats
    finally:
        col.stop()
        end_session(system_broker, col.config.client_id)
        store.close()


@pytest.mark.postgres
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_fleet_collect_stops_on_a_signal_while_the_store_is_failing(sig, system_broker, fleet_id, pg_url):
    store = open_store(pg_url)
    _refuse_device(pg_url, store, "*", sqlstate="57P01")
    url = f"mqtt://127.0.0.1:{system_broker.port}"
    cid = f"cli-{fleet_id}"
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from edgeslm.cli import main; sys.exit(main())",
                             "fleet", "collect", "-b", url, "--db", pg_url, "--fleet", fleet_id, "--group", "g",
                             "--client-id", cid, "--no-alerts"], stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
    t = topics.topic(fleet_id, "dev-ok", "telemetry")
    try:
        for seq in range(60):  # until the collector has subscribed and its store write fails
            publish_all(system_broker, f"p-{fleet_id}", [(t, schema.encode(good(fleet_id, seq=seq)))])
            if wait_for(lambda: any("store write failed" in line for line in lines), 0.5):
                break
        assert any("store write failed" in line for line in lines), lines
        t0 = time.monotonic()
        proc.send_signal(sig)
        proc.wait(timeout=15)
        assert time.monotonic() - t0 < 5.0 and proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        end_session(system_broker, cid)
        store.close()
