"""The fleet verbs end to end: simulate -> collect (persistent session) -> status/device/events."""

from __future__ import annotations

import json
import threading

import pytest

from edgeslm.cli import main
from edgeslm.telemetry.collector import Collector, CollectorConfig
from edgeslm.telemetry.stores import MemoryStore

from .test_resilience import end_session

pytestmark = pytest.mark.mqtt


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_simulate_collect_status_device_events(system_broker, fleet_id, tmp_path, capsys):
    url = f"mqtt://127.0.0.1:{system_broker.port}"
    db = f"sqlite:///{tmp_path}/fleet.db"
    client_id = f"cli-{fleet_id}"
    # Create the collector's session (and its shared subscription) first, so the messages the
    # simulator publishes now are queued for `fleet collect` below.
    pre = Collector(CollectorConfig(broker=system_broker, fleet=fleet_id, group="cli", client_id=client_id,
                                    session_expiry_s=7 * 24 * 3600), MemoryStore()).start()
    assert pre.wait_connected(30)
    pre.kill()
    try:
        code, out, _ = run(capsys, "fleet", "simulate", "-b", url, "--fleet", fleet_id, "--devices", "4", "--rate", "0",
                           "--messages", "5", "--json")
        assert code == 0 and json.loads(out)["acked"] == 20
        code, out, err = run(capsys, "fleet", "collect", "-b", url, "--db", db, "--fleet", fleet_id, "--group", "cli",
                             "--client-id", client_id, "--max-temperature", "40", "--offline-after", "0",
                             "--duration", "2.5", "--report-every", "1")
        assert code == 0, err
        assert "ALERT alert.firing [critical]" in out and "temperature" in out
        assert "20 stored" in err
    finally:
        end_session(system_broker, client_id)

    code, out, _ = run(capsys, "fleet", "status", "--db", db, "--fleet", fleet_id, "--json")
    devices = json.loads(out)["devices"]
    assert code == 0 and [d["device"] for d in devices] == [f"sim-{i:05d}" for i in range(4)]
    assert all(d["online"] is False and d["reason"] == "shutdown" and d["last_seq"] == 4 for d in devices)
    code, out, _ = run(capsys, "fleet", "status", "--db", db, "--fleet", fleet_id)
    assert code == 0 and "sim-00003" in out and "4 devices" in out
    code, out, _ = run(capsys, "fleet", "device", "sim-00001", "--db", db, "--fleet", fleet_id, "--json")
    hist = json.loads(out)
    assert [r["seq"] for r in hist["telemetry"]] == [4, 3, 2, 1, 0]
    assert any(e["name"] == "alert.firing" for e in hist["events"])
    code, out, _ = run(capsys, "fleet", "events", "--db", db, "--fleet", fleet_id, "--json")
    assert {e["attributes"]["rule"] for e in json.loads(out)} == {"temperature"}
    code, _, err = run(capsys, "fleet", "device", "nobody", "--db", db)
    assert code == 1 and err.startswith("error: no telemetry")
    code, _, err = run(capsys, "fleet", "status", "--db", "mysql://x")
    assert code == 1 and "error: store URL" in err


def test_live_status_from_the_broker(system_broker, fleet_id, capsys):
    url = f"mqtt://127.0.0.1:{system_broker.port}"
    from edgeslm.telemetry.simulate import SimConfig, simulate

    stop = threading.Event()
    sim = threading.Thread(target=simulate, args=(SimConfig(broker=system_broker, fleet=fleet_id, devices=3, rate=10,
                                                            duration_s=5),), kwargs={"stop": stop})
    sim.start()
    try:
        code, out, _ = run(capsys, "fleet", "status", "-b", url, "--fleet", fleet_id, "--listen", "1.0", "--json")
    finally:
        stop.set()
        sim.join(10)
    rows = json.loads(out)["devices"]
    assert code == 0 and len(rows) == 3
    assert all(r["online"] is True and r["last_seq"] is not None and r["tok_s_p50"] > 0 for r in rows)


# -- careless input: one line and exit != 0, never a traceback, never an empty store made by a reader ---------
def _one_line_error(code, err, expected_code=1, *needles):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == expected_code, err
    assert "Traceback" not in err and any(all(n in line for n in needles) for line in lines), err


def test_fleet_collect_refuses_careless_options(capsys, tmp_path):
    db = f"sqlite:///{tmp_path}/f.db"
    short = ("--duration", "3", "--connect-timeout", "3")  # a regression fails the test instead of hanging it
    code, _, err = run(capsys, "fleet", "collect", "--db", db, "--batch-size", "0", *short)
    _one_line_error(code, err, 2, "--batch-size")
    code, _, err = run(capsys, "fleet", "collect", "--db", db, "--group", "a+b", *short)
    _one_line_error(code, err, 1, "share group", "a+b")
    code, _, err = run(capsys, "fleet", "collect", "--db", db, "--max-error-rate", "7", *short)
    _one_line_error(code, err, 2, "--max-error-rate")
    assert not (tmp_path / "f.db").exists()  # refused before a store was created
    code, _, err = run(capsys, "fleet", "collect", "--db", "sqlite:////proc/nope/x.db", "--duration", "1")
    _one_line_error(code, err, 1, "error:", "/proc/nope/x.db")


def test_fleet_collect_fails_on_an_unreachable_broker(capsys, tmp_path):
    from edgeslm.telemetry.broker import free_port

    code, _, err = run(capsys, "fleet", "collect", "-b", f"mqtt://127.0.0.1:{free_port()}", "--db",
                       f"sqlite:///{tmp_path}/f.db", "--connect-timeout", "1", "--duration", "5")
    _one_line_error(code, err, 1, "cannot reach the MQTT broker")


def test_fleet_collect_fails_when_the_broker_refuses_it(mosquitto_factory, fleet_id, capsys, tmp_path):
    proc = mosquitto_factory(users={"collector": "right"}, fleet=fleet_id)
    code, _, err = run(capsys, "fleet", "collect", "-b", f"mqtt://127.0.0.1:{proc.files.port}", "-u", "collector",
                       "--password", "wrong", "--db", f"sqlite:///{tmp_path}/f.db", "--fleet", fleet_id,
                       "--connect-timeout", "5", "--duration", "5")
    _one_line_error(code, err, 1, "refused the collector")
    # right password, but a fleet its access rules do not cover: the subscriptions are refused
    code, _, err = run(capsys, "fleet", "collect", "-b", f"mqtt://127.0.0.1:{proc.files.port}", "-u", "collector",
                       "--password", "right", "--db", f"sqlite:///{tmp_path}/f.db", "--fleet", "other",
                       "--connect-timeout", "5", "--duration", "5")
    _one_line_error(code, err, 1, "refused the collector's subscriptions")


@pytest.mark.parametrize("verb", [["status"], ["device", "dev-1"], ["events"]])
def test_read_only_verbs_refuse_a_store_that_does_not_exist(verb, capsys, tmp_path):
    typo = tmp_path / "flet.db"
    code, _, err = run(capsys, "fleet", *verb, "--db", f"sqlite:///{typo}")
    _one_line_error(code, err, 1, "no fleet store at", str(typo))
    assert not typo.exists()  # not created empty
    code, _, err = run(capsys, "fleet", *verb, "--db", "sqlite:////proc/nope/x.db")
    _one_line_error(code, err, 1, "no fleet store at")
    other = tmp_path / "other.db"
    import sqlite3

    sqlite3.connect(other).execute("CREATE TABLE x (a)").connection.commit()
    code, _, err = run(capsys, "fleet", *verb, "--db", f"sqlite:///{other}")
    _one_line_error(code, err, 1, "is not an edgeslm fleet store")


@pytest.mark.postgres
def test_read_only_verbs_refuse_a_postgres_schema_that_does_not_exist(capsys, pg_url):
    code, _, err = run(capsys, "fleet", "status", "--db", pg_url.replace("?schema=", "?schema=nope_"))
    _one_line_error(code, err, 1, "is not an edgeslm fleet store")
