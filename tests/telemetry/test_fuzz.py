"""Property: no JSON value in any field of any message kind stops collection (hypothesis).

Every example takes one field of a valid telemetry, status or event message (nested ones
too: each summary key, each resource attribute, the agent section, event attributes, a new
key), replaces it with arbitrary JSON (huge integers, NaN and 1e999, NUL and lone surrogates,
objects where text belongs, documents nested thousands deep) or deletes it, publishes it
through the real broker to two collectors (SQLite and PostgreSQL), then publishes a valid
message and requires both stores to hold it. ``EDGESLM_FUZZ_EXAMPLES`` sets the count
(default 250; about 20 s here).
"""

from __future__ import annotations

import copy
import json
import os
import threading
import time
import uuid

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis not installed (pip install 'edgeslm[test]')")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edgeslm.telemetry import schema, topics  # noqa: E402
from edgeslm.telemetry.collector import Collector, CollectorConfig  # noqa: E402
from edgeslm.telemetry.mqtt import connect, make_client  # noqa: E402
from edgeslm.telemetry.simulate import _resource, fake_metrics  # noqa: E402
from edgeslm.telemetry.stores import open_store  # noqa: E402

from .helpers import wait_for  # noqa: E402

pytestmark = [pytest.mark.mqtt, pytest.mark.postgres]
EXAMPLES = int(os.environ.get("EDGESLM_FUZZ_EXAMPLES", "250"))
PLACEHOLDER = "__edgeslm_raw_fragment__"


def templates(fleet: str) -> dict[str, dict]:
    import random

    now = time.time()
    return {
        "telemetry": schema.telemetry_body(fleet, "dev-fuzz", 0, now, 10.0, fake_metrics(random.Random(1), 0.5),
                                           _resource(1), {"buffered": 0, "dropped": 0, "rejected": 0}),
        "status": schema.status_body(fleet, "dev-fuzz", now, True, "connected", _resource(2)),
        "events": schema.event_seq(schema.event_body(fleet, "dev-fuzz", now, "alert.firing", "critical", "hot",
                                                     "e-0", "agent", {"rule": "temperature", "value": 81.0}), 0),
    }


def field_paths(body: dict, prefix: tuple = ()) -> list[tuple]:
    """Every key path of ``body`` (nested objects included), plus a new key at each level."""
    out = [prefix + ("zz-new",)]
    for key, value in body.items():
        out.append(prefix + (key,))
        if isinstance(value, dict):
            out += field_paths(value, prefix + (key,))
    return out


_scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=2**62, max_value=2**80)
            | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40)
            | st.sampled_from(["", "[/bold]", "[red]x[/]", "\x1b]0;pwned\x07", "a\x00b"]))
_json = st.recursive(_scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                                                         max_size=4), max_leaves=10)
_raw = (st.sampled_from(["1e999", "-1e999", "123456789012345678901234567890", '"\\u0000"', '"\\ud800"',
                         '"x\\udfff"', "NaN", "Infinity", "-0.0", "1E+400"])
        | st.integers(2, 3000).map(lambda n: "[" * n + "]" * n)
        | st.integers(2, 400).map(lambda n: '{"a":' * n + "1" + "}" * n))
# values that broke a store or a view before (and their neighbours), drawn as often as arbitrary JSON
_nasty = st.sampled_from([2**63, 2**63 - 1, 2**64, -(2**63) - 1, 10**30, -1, 0, 1.5, 1e300, -1e300, 4102444801,
                          float("inf"), float("nan"), True, False, None, "", "x", "a\x00b", "\ud800", "[/]",
                          "A" * 5000, {"a": 1}, {}, [1, 2], [], json.loads("[" * 12 + "0" + "]" * 12)])
_mutation = st.one_of(_nasty.map(lambda v: ("set", v)), _json.map(lambda v: ("set", v)),
                      _raw.map(lambda r: ("raw", r)), st.just(("delete", None)))


def mutate(body: dict, path: tuple, mutation: tuple) -> bytes:
    body = copy.deepcopy(body)
    parent = body
    for key in path[:-1]:
        parent = parent[key]
    how, value = mutation
    if how == "delete":
        parent.pop(path[-1], None)
    else:
        parent[path[-1]] = PLACEHOLDER if how == "raw" else value
    text = json.dumps(body, ensure_ascii=True, allow_nan=True)  # NaN/Infinity literals and \ud800 escapes pass
    if how == "raw":
        text = text.replace(json.dumps(PLACEHOLDER), value)
    return text.encode()


class Publisher:
    """One MQTT v5 connection; ``send`` waits for the broker's PUBACK so the order is kept."""

    def __init__(self, broker):
        self.acked: set[int] = set()
        self.lock = threading.Condition()
        self.client = make_client(broker, f"fuzz-{uuid.uuid4().hex[:8]}")
        self.client.on_publish = self._on_publish
        connect(self.client, broker, clean_start=True, wait=True)
        self.client.loop_start()

    def _on_publish(self, client, userdata, mid, reason_code, properties=None):
        with self.lock:
            self.acked.add(mid)
            self.lock.notify_all()

    def send(self, topic: str, payload: bytes) -> None:
        mid = self.client.publish(topic, payload, qos=1).mid
        with self.lock:
            assert self.lock.wait_for(lambda: mid in self.acked, 10), "no PUBACK"

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def test_arbitrary_json_in_any_field_never_stops_collection(system_broker, fleet_id, tmp_path, pg_url):
    stores = [open_store(f"sqlite:///{tmp_path}/fuzz.db"), open_store(pg_url)]
    cols = [Collector(CollectorConfig(broker=system_broker, fleet=fleet_id, group=None, session_expiry_s=0,
                                      client_id=f"fuzz-{i}-{fleet_id}", batch_wait_s=0.01, acks=False), s).start()
            for i, s in enumerate(stores)]
    assert all(c.wait_connected(30) and c.subscribe_error is None for c in cols)
    pub = Publisher(system_broker)
    bodies = templates(fleet_id)
    paths = [(kind, p) for kind, body in bodies.items() for p in field_paths(body)]
    canary_topic = topics.topic(fleet_id, "canary", "telemetry")
    seen = {"n": 0, "by_kind": {}}
    t0 = time.monotonic()

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(target=st.sampled_from(paths), mutation=_mutation)
    def one(target, mutation):
        kind, path = target
        n = seen["n"]
        errors_before = [(c.stats.store_errors, c.stats.dead.get("store", 0)) for c in cols]
        body = bodies[kind]
        if "seq" in body:  # a fresh seq per example, so a message the mutation leaves valid is stored anew
            body = dict(body, seq=n, **({"id": f"e-{n}"} if kind == "events" else {}))
        pub.send(topics.topic(fleet_id, "dev-fuzz", kind), mutate(body, path, mutation))
        canary = schema.telemetry_body(fleet_id, "canary", n, time.time(), 1.0, {}, {})
        pub.send(canary_topic, schema.encode(canary))
        for store in stores:  # the valid message sent afterwards is stored, in both stores
            assert wait_for(lambda s=store: (s.history(fleet_id, "canary", 1) or [{}])[0].get("seq") == n, 20), \
                (kind, path, mutation, [c.stats for c in cols], [c.error for c in cols])
        assert all(c.error is None for c in cols)
        # and validation refused it before the store had to (bisection is the second line of defence)
        assert [(c.stats.store_errors, c.stats.dead.get("store", 0)) for c in cols] == errors_before, \
            (kind, path, mutation, [c.stats for c in cols])
        seen["n"] += 1
        seen["by_kind"][kind] = seen["by_kind"].get(kind, 0) + 1

    try:
        one()
    finally:
        pub.close()
        for c in cols:
            c.stop()
    elapsed = time.monotonic() - t0
    print(f"\nfuzz: {seen['n']} examples ({seen['by_kind']}) through the broker into SQLite and PostgreSQL "
          f"in {elapsed:.1f} s; dead letters {dict(cols[0].stats.dead)}")
    assert seen["n"] >= min(EXAMPLES, 50)
    for col, store in zip(cols, stores):  # every message accounted for: stored, or a dead letter with a reason
        assert col.stats.received == 2 * seen["n"] and store.telemetry_count(fleet_id) >= seen["n"]
        assert sum(store.dead_letter_counts().values()) == sum(col.stats.dead.values()) > 0
        store.close()
