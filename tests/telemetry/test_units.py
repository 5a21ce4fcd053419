"""Broker-free tests: topics, schema validation, aggregation, the on-disk queue, stores, alerts."""

from __future__ import annotations

import json
import time

import pytest

from edgeslm.errors import TelemetryError
from edgeslm.telemetry import schema, topics
from edgeslm.telemetry.alerts import AlertEngine, AlertRules
from edgeslm.telemetry.buffer import DiskQueue
from edgeslm.telemetry.metrics import IntervalAggregator
from edgeslm.telemetry.mqtt import BrokerConfig
from edgeslm.telemetry.stores import Batch, MemoryStore, open_store
from edgeslm.telemetry.stores.base import DeadLetter

from .fakes import FakeModel


def telemetry(fleet="f", device="d", seq=0, ts=None, **metrics):
    body = schema.telemetry_body(fleet, device, seq, ts or time.time(), 10.0, metrics, {"edgeslm.bundle.id": "m"})
    return schema.parse(topics.topic(fleet, device, "telemetry"), schema.encode(body))


def status(fleet="f", device="d", online=True, ts=None):
    body = schema.status_body(fleet, device, ts or time.time(), online, "connected" if online else "lost")
    return schema.parse(topics.topic(fleet, device, "status"), schema.encode(body))


def test_topics_build_parse_and_refuse_wildcards():
    assert topics.topic("demo", "pi-01", "telemetry") == "edgeslm/v1/demo/pi-01/telemetry"
    assert topics.parse("edgeslm/v1/demo/pi-01/status") == topics.TopicParts("demo", "pi-01", "status")
    assert topics.shared("g", topics.fleet_filter("demo", "telemetry")) == "$share/g/edgeslm/v1/demo/+/telemetry"
    for bad in ("a/b", "a+", "#", "", "has space"):
        with pytest.raises(TelemetryError, match="not valid"):
            topics.topic("demo", bad, "telemetry")
    with pytest.raises(TelemetryError):
        topics.parse("edgeslm/v2/demo/pi/telemetry")


def test_summarize_nearest_rank():
    s = schema.summarize([float(i) for i in range(1, 101)])
    assert (s["count"], s["p50"], s["p95"], s["max"], s["sum"]) == (100, 50.0, 95.0, 100.0, 5050.0)
    assert schema.summarize([])["count"] == 0


@pytest.mark.parametrize("payload,reason", [
    (b"{not json", "malformed_json"),
    (b"[1, 2]", "malformed_json"),
    (b'{"schema_version": 1, "ts": NaN}', "malformed_json"),
    (b'{"kind": "telemetry"}', "schema_version"),
    (json.dumps({"schema_version": 2, "kind": "telemetry"}).encode(), "schema_version"),
    (b"x" * (schema.MAX_PAYLOAD_BYTES + 1), "oversized"),
])
def test_parse_refuses_with_a_reason(payload, reason):
    with pytest.raises(schema.MessageError) as info:
        schema.parse("edgeslm/v1/f/d/telemetry", payload)
    assert info.value.reason == reason


@pytest.mark.parametrize("version", [0, -1, True, 1.0, "1", None, 2**70])
def test_parse_refuses_schema_versions_that_are_not_the_integer_1(version):
    body = schema.telemetry_body("f", "d", 0, time.time(), 1.0, {}, {})
    body["schema_version"] = version
    with pytest.raises(schema.MessageError) as info:
        schema.parse("edgeslm/v1/f/d/telemetry", json.dumps(body).encode())
    assert info.value.reason == "schema_version" and info.value.ack == ("f", "d", 0)
    from edgeslm.telemetry import ingest  # ... but a collector does not tell the device to forget it

    (dead,) = ingest.to_entries([("edgeslm/v1/f/d/telemetry", json.dumps(body).encode(), 1, 1, 0.0)], 65536)
    assert dead.reason == "schema_version" and ingest.ack_ranges([dead]) == {}


def test_an_old_agent_buffer_gets_seqs_so_collector_acks_can_clear_it(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE queue (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB "
                     "NOT NULL); CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);")
    db.executemany("INSERT INTO queue(topic, payload) VALUES (?, ?)",
                   [("t", b'{"seq": 7}'), ("e", b'{"attributes": {"seq": 8}}')])
    db.execute("INSERT INTO meta VALUES ('next_seq', 9)")
    db.commit()
    db.close()
    q = DiskQueue(path)
    assert len(q) == 2 and q.remove_seqs([(7, 8)]) == [1, 2] and len(q) == 0
    assert q.put("t", lambda s: b"{}") == 9


def test_parse_refuses_spoofed_device_and_bad_fields():
    body = schema.telemetry_body("f", "other", 0, time.time(), 1.0, {}, {})
    with pytest.raises(schema.MessageError, match="differ from the topic"):
        schema.parse("edgeslm/v1/f/d/telemetry", schema.encode(body))
    body = schema.telemetry_body("f", "d", -1, time.time(), 1.0, {}, {})
    with pytest.raises(schema.MessageError, match="seq"):
        schema.parse("edgeslm/v1/f/d/telemetry", schema.encode(body))
    body = schema.telemetry_body("f", "d", 0, time.time(), 1.0, {schema.TTFT: {"count": 1}}, {})
    with pytest.raises(schema.MessageError, match=schema.TTFT):
        schema.parse("edgeslm/v1/f/d/telemetry", schema.encode(body))
    with pytest.raises(schema.MessageError, match="kind"):
        schema.parse("edgeslm/v1/f/d/status", schema.encode(schema.telemetry_body("f", "d", 0, 1.0, 1.0, {}, {})))


def test_aggregator_from_real_generations():
    model = FakeModel(fail_on="boom")
    agg = IntervalAggregator()
    model.generator.listeners.append(agg.record)
    for _ in range(5):
        model.generate("the edge", max_new_tokens=4, stop_on_eos=False)
    agg.record_error("GenerationError")
    m = agg.take()
    assert m[schema.REQUEST_DURATION]["count"] == 5
    assert m[schema.TTFT]["p95"] > 0 and m[schema.TPOT]["count"] == 5
    assert m[schema.TOKEN_USAGE] == {"input": 10, "output": 20}
    assert m[schema.ERRORS] == {"total": 1, "by_type": {"GenerationError": 1}}
    assert agg.take()[schema.REQUEST_DURATION]["count"] == 0  # a new interval starts empty


def test_disk_queue_fifo_bound_and_persistent_seq(tmp_path):
    path = tmp_path / "q.db"
    q = DiskQueue(path, max_messages=3)
    seqs = [q.put("t", lambda s: str(s).encode()) for _ in range(5)]
    assert seqs == [0, 1, 2, 3, 4]
    assert len(q) == 3 and q.dropped == 2  # the two oldest were dropped, and counted
    rows = q.peek(0, 10)
    assert [p for _, _, p in rows] == [b"2", b"3", b"4"]  # oldest first
    q.remove([rows[0][0]])
    q.close()
    q = DiskQueue(path, max_messages=3)  # after a restart: same rows, same counters, seq continues
    assert [p for _, _, p in q.peek(0, 10)] == [b"3", b"4"] and q.dropped == 2
    assert q.put("t", lambda s: str(s).encode()) == 5
    with pytest.raises(TelemetryError):
        DiskQueue(tmp_path / "x.db", max_messages=0)


@pytest.mark.parametrize("url", ["memory://", "sqlite"])
def test_store_is_idempotent_and_keeps_newest_device_row(url, tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/f.db" if url == "sqlite" else url)
    ttft = {"count": 3, "sum": 0.3, "p50": 0.1, "p95": 0.2, "max": 0.2}
    first = Batch(telemetry=[telemetry(seq=1, **{schema.TTFT: ttft}), telemetry(seq=0)], status=[status()])
    assert store.write(first) == 2
    again = Batch(telemetry=[telemetry(seq=1), telemetry(seq=1)],
                  dead=[DeadLetter("edgeslm/v1/f/d/telemetry", "malformed_json", "x", 3, b"{{{")])
    assert store.write(again) == 0
    assert store.telemetry_count("f") == 2
    (row,) = store.devices("f")
    assert (row.online, row.last_seq, row.model_id, row.ttft_p95_s) == (True, 1, "m", 0.2)
    assert [r["seq"] for r in store.history("f", "d")] == [1, 0]
    assert store.dead_letter_counts() == {"malformed_json": 1}
    store.close()


def test_store_urls():
    with pytest.raises(TelemetryError, match="expected"):
        open_store("mysql://x")
    assert isinstance(open_store("memory://"), MemoryStore)


def test_broker_urls():
    cfg = BrokerConfig.from_url("mqtts://dev%201:pw@hub.example:9999")
    assert (cfg.tls, cfg.host, cfg.port, cfg.username, cfg.password) == (True, "hub.example", 9999, "dev 1", "pw")
    assert BrokerConfig.from_url("mqtt://h").port == 1883 and BrokerConfig.from_url("mqtts://h").port == 8883
    assert BrokerConfig.from_url("h:1", username="u").username == "u"
    with pytest.raises(TelemetryError, match="scheme"):
        BrokerConfig.from_url("http://h")


def test_alert_rules_fire_once_and_resolve():
    rules = AlertRules(offline_after_s=5, ttft_p95_slo_s=0.3, error_rate=0.2, min_requests=5, temperature_c=80)
    engine = AlertEngine(rules)
    slow = {"count": 10, "sum": 5.0, "p50": 0.4, "p95": 0.5, "max": 0.6}
    engine.observe(telemetry(seq=0, **{schema.TTFT: slow, schema.REQUEST_DURATION: slow,
                                        schema.ERRORS: {"total": 5, "by_type": {}}, schema.TEMPERATURE: 85.0}), 100.0)
    fired = engine.evaluate(101.0)
    assert sorted(a.rule for a in fired) == ["error_rate", "latency", "temperature"]
    assert all(a.firing and a.name == "alert.firing" for a in fired)
    assert engine.evaluate(102.0) == []  # no repeats while still true
    offline = engine.evaluate(106.0)
    assert [(a.rule, a.firing) for a in offline] == [("offline", True)]
    fast = {"count": 10, "sum": 1.0, "p50": 0.1, "p95": 0.1, "max": 0.1}
    engine.observe(telemetry(seq=1, **{schema.TTFT: fast, schema.REQUEST_DURATION: fast,
                                        schema.ERRORS: {"total": 0, "by_type": {}}, schema.TEMPERATURE: 50.0}), 107.0)
    resolved = engine.evaluate(107.5)
    assert sorted((a.rule, a.firing) for a in resolved) == [("error_rate", False), ("latency", False),
                                                             ("offline", False), ("temperature", False)]
    engine.observe(status(online=False), 110.0)
    assert engine.evaluate(114.0) == [] and engine.evaluate(115.5)[0].rule == "offline"


class _Wire:
    """Records publishes like paho: (rc, mid), mids counting up."""

    def __init__(self):
        self.sent: list[tuple[int, bytes]] = []

    def __call__(self, topic, payload):
        self.sent.append((len(self.sent) + 1, payload))
        return 0, len(self.sent)

    def seqs(self, start=0):
        return [json.loads(p)["seq"] for _, p in self.sent[start:]]


def _outbox(n, **kw):
    from edgeslm.telemetry.outbox import Outbox

    q = DiskQueue(":memory:")
    for _ in range(n):
        q.put("edgeslm/v1/f/d/telemetry", lambda s: json.dumps({"seq": s}).encode())
    wire = _Wire()
    return Outbox(q, wire, **kw), q, wire


def test_outbox_keeps_and_resends_what_the_broker_had_no_subscriber_for():
    from edgeslm.telemetry.outbox import NO_MATCHING_SUBSCRIBERS

    box, q, wire = _outbox(3, unrouted_retry_s=(0.2, 0.4), end_to_end=False)
    box.pump(0.0)
    assert wire.seqs() == [0, 1, 2]
    # after a broker restart no collector is subscribed yet: the broker drops the message (reason 16)
    for mid, code in ((1, 0), (2, NO_MATCHING_SUBSCRIBERS), (3, NO_MATCHING_SUBSCRIBERS)):
        box.puback(mid, code, 0.0)
    assert len(q) == 2 and box.acked == 1 and box.unrouted == 2  # kept, not counted as delivered
    box.pump(0.1)
    assert len(wire.sent) == 3  # held back for a while (no hot loop)
    box.pump(0.25)
    assert wire.seqs(3) == [1, 2]  # the same messages again, oldest first
    for mid, _ in wire.sent[3:]:
        box.puback(mid, 0, 0.3)
    assert len(q) == 0 and box.acked == 3 and box.rejected == 0


def test_outbox_keeps_what_only_the_broker_acked_until_a_collector_does():
    """PUBACK 0 can come from a live view while no collector has the message: keep it until acked end to end."""
    box, q, wire = _outbox(4, ack_grace_s=1.0, probe_after_s=(30.0, 60.0))
    box.pump(0.0)  # seq 0..3 sent at t=0
    for mid in (1, 2, 3, 4):
        box.puback(mid, 0, 0.0)
    assert len(q) == 4 and box.awaiting == 4  # the broker has them; nothing deleted yet
    box.collector_acked([(0, 1)], 0.5)
    assert len(q) == 2 and box.delivered == 2
    box.pump(0.6)
    assert len(wire.sent) == 4  # acks arrive in order: no gap, nothing resent
    q.put("edgeslm/v1/f/d/telemetry", lambda s: json.dumps({"seq": s}).encode())
    box.pump(10.0)  # seq 4 sent at t=10
    box.puback(5, 0, 10.0)
    box.collector_acked([(4, 4)], 10.5)  # acked, while 2 and 3 (sent 10 s earlier) never were: lost
    box.pump(10.5)
    assert wire.seqs(5) == [2, 3] and box.resent == 2
    for mid, _ in wire.sent[5:]:
        box.puback(mid, 0, 10.6)
    box.collector_acked([(2, 3)], 10.7)
    assert len(q) == 0 and box.awaiting == 0


def test_outbox_probes_with_one_message_and_backs_off():
    box, q, wire = _outbox(5, probe_after_s=(30.0, 60.0), resend_after_s=30.0)
    box.pump(0.0)
    for mid in range(1, 6):
        box.puback(mid, 0, 0.0)
    box.pump(29.0)
    assert len(wire.sent) == 5
    box.pump(31.0)  # no collector ack for 30 s: only the oldest goes again
    assert wire.seqs(5) == [0]
    box.puback(6, 0, 31.0)
    box.pump(80.0)  # the next probe waits 60 s (doubled)
    assert len(wire.sent) == 6
    box.pump(92.0)
    assert wire.seqs(6) == [0]
    box.puback(7, 0, 92.0)
    box.collector_acked([(0, 0)], 93.0)  # a collector took the probe: the rest follow at once (gap rule)
    box.pump(93.0)
    assert sorted(wire.seqs(7)) == [1, 2, 3, 4]


def test_outbox_backs_off_a_message_no_collector_takes():
    """A gap resend of the same row waits longer each time: a refused message cannot loop."""
    box, q, wire = _outbox(1, resend_after_s=30.0, probe_after_s=(1e9, 1e9))
    times = []
    t = 0.0
    box.pump(t)
    for _ in range(400):  # every 10 s a newer message is sent and acked while row 0 never is
        t += 10.0
        for mid, _ in wire.sent[len(times):]:
            box.puback(mid, 0, t - 9.0)
        times += [t] * (len(wire.sent) - len(times))
        q.put("edgeslm/v1/f/d/telemetry", lambda s: json.dumps({"seq": s}).encode())
        box.pump(t - 9.0)
        box.puback(wire.sent[-1][0], 0, t - 9.0)
        times.append(t)
        box.collector_acked([(q.last_seq, q.last_seq)], t)
        box.pump(t)
    resends = [i for i, (_, p) in enumerate(wire.sent) if json.loads(p)["seq"] == 0][1:]
    assert 5 <= len(resends) <= 10, len(resends)  # about 1 h 6 min: 0, 30, 60, 120, 240, 480, 960, 1920 s


def test_parse_ack_ignores_anything_else():
    from edgeslm.telemetry.agent import parse_ack

    good = schema.encode(schema.ack_body("f", "d", 1.0, [[0, 3], [5, 5]]))
    assert parse_ack(good, "f", "d") == [(0, 3), (5, 5)]
    assert parse_ack(good, "f", "other") == []
    for bad in (b"", b"[]", b"{", b'{"kind": "ack", "fleet": "f", "device": "d", "seqs": [[1]]}',
                b'{"kind": "ack", "fleet": "f", "device": "d", "seqs": "x"}', b"[" * 100000):
        assert parse_ack(bad, "f", "d") == []
    assert parse_ack(b'{"kind": "ack", "fleet": "f", "device": "d", "seqs": [[3, 1], [true, 2], [1, 2]]}',
                     "f", "d") == [(1, 2)]


@pytest.mark.parametrize("url", ["sqlite", "postgres"])
def test_sql_store_reads_do_not_break_a_concurrent_write(url, tmp_path, request):
    """One store object, the collector writing while another thread reads (fleet status, tests)."""
    import threading

    if url == "postgres":
        pytest.importorskip("psycopg")
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{tmp_path}/fleet.db"
    store = open_store(url)
    done = threading.Event()

    def read():
        while not done.is_set():
            store.telemetry_count("f")
            store.devices("f")

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for seq in range(200):
            batch = Batch()
            batch.telemetry.append(telemetry(seq=seq))
            assert store.write(batch) == 1
    finally:
        done.set()
        reader.join()
    assert store.telemetry_count("f") == 200  # not one batch emptied by a read's commit
    store.close()
