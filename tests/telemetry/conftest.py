"""Fixtures for the telemetry suite: brokers (the shared one, or our own mosquitto), PostgreSQL.

Broker and database tests skip with a reason only when the service is unreachable; in CI
they run. Each test uses its own fleet id (uuid), so tests on the shared broker on
127.0.0.1:1883 never see each other's messages, and cleans up the retained status it made.
"""

from __future__ import annotations

import shutil
import time
import uuid

import pytest

from edgeslm.telemetry import topics
from edgeslm.telemetry.broker import Mosquitto, free_port, port_open, write_config
from edgeslm.telemetry.mqtt import BrokerConfig, connect, make_client

from .helpers import wait_for  # noqa: F401  (re-exported for fixtures)

SYSTEM_BROKER = ("127.0.0.1", 1883)
PG = ("127.0.0.1", 5432)


@pytest.fixture
def fleet_id():
    return "t-" + uuid.uuid4().hex[:12]


@pytest.fixture
def system_broker(fleet_id):
    """BrokerConfig of the machine's Mosquitto; clears this test's retained statuses afterwards."""
    if not port_open(*SYSTEM_BROKER, timeout=1.0):
        pytest.skip("no MQTT broker on 127.0.0.1:1883")
    cfg = BrokerConfig(host=SYSTEM_BROKER[0], port=SYSTEM_BROKER[1])
    yield cfg
    clear_retained(cfg, fleet_id)


def clear_retained(cfg: BrokerConfig, fleet: str) -> None:
    """Delete retained status messages of ``fleet`` (empty retained payloads)."""
    seen: set[str] = set()
    client = make_client(cfg, f"cleanup-{uuid.uuid4().hex[:8]}")
    client.on_message = lambda c, u, m: seen.add(m.topic) if m.retain and m.payload else None
    try:
        connect(client, cfg, clean_start=True, wait=True)
    except Exception:
        return
    client.loop_start()
    client.subscribe(topics.fleet_filter(fleet, "status"), qos=1)
    time.sleep(0.3)
    for t in seen:
        client.publish(t, b"", qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


@pytest.fixture
def mosquitto_factory(tmp_path):
    """Start our own mosquitto(s) on free loopback ports; all are stopped at the end."""
    if shutil.which("mosquitto") is None and not shutil.which("/usr/sbin/mosquitto"):
        pytest.skip("mosquitto is not installed")
    started: list[Mosquitto] = []

    def start(**kw) -> Mosquitto:
        d = tmp_path / f"broker{len(started)}"
        files = write_config(d, free_port(), **kw)
        m = Mosquitto(files).start()
        started.append(m)
        return m

    yield start
    for m in started:
        m.kill()


@pytest.fixture
def pg_url():
    """postgresql:// URL with a fresh schema (dropped afterwards)."""
    psycopg = pytest.importorskip("psycopg", reason="psycopg not installed (pip install 'edgeslm[postgres]')")
    if not port_open(*PG, timeout=1.0):
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    schema = "edgeslm_t_" + uuid.uuid4().hex[:10]
    dsn = "postgresql://postgres@127.0.0.1:5432/test"
    yield f"{dsn}?schema={schema}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
