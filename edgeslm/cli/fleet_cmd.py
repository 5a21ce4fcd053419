"""edgeslm fleet: collect, status, device, events, simulate."""

from __future__ import annotations

import logging
import signal
import sys
import time
import uuid

import click

from . import cli
from ._common import emit_json, json_option
from ._output import current
from ..telemetry.cliopts import broker_options

DEFAULT_DB = "sqlite:///fleet.db"


@cli.group("fleet")
def fleet():
    """Watch a fleet of devices running edgeslm: collect telemetry, show status, raise alerts.

    \b
    The 3-command demo (a broker, fake devices, the status table):
      mosquitto -p 1883 &
      edgeslm fleet simulate --devices 20 --rate 1 --duration 120 &
      edgeslm fleet status
    \b
    In production, devices run `edgeslm agent`, one or more collectors store everything:
      edgeslm fleet collect --broker mqtts://hub:8883 --db postgresql://fleet@db/fleet
      edgeslm fleet status --db postgresql://fleet@db/fleet
    """


def _live_store(broker, fleet_id, seconds):
    """Listen to the broker for ``seconds`` into a MemoryStore (no database needed)."""
    from ..telemetry.collector import Collector, CollectorConfig
    from ..telemetry.stores import MemoryStore

    from ..errors import TelemetryError

    store = MemoryStore()
    # a view: plain subscription, no session, and no acks (it stores nothing durably, so it must
    # never tell a device to forget a message)
    col = Collector(CollectorConfig(broker=broker, fleet=fleet_id, group=None, session_expiry_s=0, acks=False,
                                    client_id=f"edgeslm-status-{uuid.uuid4().hex[:12]}"), store)
    col.start()
    try:
        with current().steps().step(f"Listening to {broker.url} for {seconds:g} s"):
            if not col.wait_connected(min(10.0, seconds + 5)):
                raise TelemetryError(col.connect_error or f"cannot reach the MQTT broker at {broker.url}")
            time.sleep(seconds)
            col.check()
    finally:
        col.stop()
    return store


@fleet.command("status")
@click.option("--db", default=None, help="Store to read (sqlite:///fleet.db, postgresql://...). "
              "Without it, listen to the broker live for --listen seconds.")
@click.option("--fleet", "fleet_id", default=None, help="Only this fleet.")
@click.option("--listen", default=3.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds to listen to the broker when no --db is given.")
@click.option("--stale-after", default=60.0, show_default=True, type=click.FloatRange(0),
              help="Show an online device as 'stale' when its newest telemetry is older than this (s).")
@broker_options
@json_option
def status_command(db, fleet_id, listen, stale_after, broker, as_json):
    """One line per device: online, model, last seen, p95 time to first token, tok/s, errors, temperature.

    \b
    Examples:
      edgeslm fleet status                                 # listen live to mqtt://127.0.0.1:1883
      edgeslm fleet status --db sqlite:///fleet.db --fleet demo
      edgeslm fleet status --db postgresql://postgres@127.0.0.1/fleet --json

    'errors' is failed/all requests in the device's newest interval.
    """
    from ..telemetry.stores import open_store
    from ..telemetry.views import online_text, status_table

    store = open_store(db, create=False) if db else _live_store(broker, fleet_id, listen)
    with store:
        rows = store.devices(fleet_id)
        dead = store.dead_letter_counts()
    if as_json:
        emit_json({"devices": [dict(r.to_dict(), state=online_text(r, stale_after)) for r in rows],
                   "dead_letters": dead})
        return
    from ..telemetry.views import console

    if not rows:
        click.echo("no devices seen" + (f" in fleet {fleet_id}" if fleet_id else "") +
                   (" (is a collector writing to this store?)" if db else f" on {broker.url} in {listen:g} s"))
        return
    online = sum(1 for r in rows if r.online)
    console().print(status_table(rows, stale_after, title=f"{len(rows)} devices, {online} online"))
    if dead:
        click.echo("dead letters: " + ", ".join(f"{k} {v}" for k, v in sorted(dead.items())), err=True)


@fleet.command("device")
@click.argument("device")
@click.option("--db", default=DEFAULT_DB, show_default=True, help="Store to read.")
@click.option("--fleet", "fleet_id", default=None, help="Fleet of the device (when ids repeat across fleets).")
@click.option("--limit", "-n", default=20, show_default=True, type=click.IntRange(1, 100_000),
              help="Intervals to show, newest first.")
@json_option
def device_command(device, db, fleet_id, limit, as_json):
    """History of one DEVICE: its newest telemetry intervals and events.

    \b
    Examples:
      edgeslm fleet device sim-00003
      edgeslm fleet device pi-kitchen --db postgresql://postgres@127.0.0.1/fleet -n 100 --json
    """
    from ..errors import TelemetryError
    from ..telemetry.stores import open_store
    from ..telemetry.views import event_line, history_table

    with open_store(db, create=False) as store:
        rows = store.history(fleet_id, device, limit)
        events = store.events(fleet_id, device, limit)
    if not rows and not events:
        raise TelemetryError(f"no telemetry for device {device!r} in {db}")
    if as_json:
        emit_json({"device": device, "telemetry": rows, "events": events})
        return
    from ..telemetry.views import console

    console().print(history_table(rows, title=f"{device}: newest {len(rows)} intervals"))
    for e in events:
        click.echo(event_line(e))


@fleet.command("events")
@click.option("--db", default=DEFAULT_DB, show_default=True, help="Store to read.")
@click.option("--fleet", "fleet_id", default=None, help="Only this fleet.")
@click.option("--limit", "-n", default=50, show_default=True, type=click.IntRange(1, 100_000))
@json_option
def events_command(db, fleet_id, limit, as_json):
    """Newest events: alerts firing and resolving, agent reports.

    \b
    Example:
      edgeslm fleet events --fleet demo -n 20
    """
    from ..telemetry.stores import open_store
    from ..telemetry.views import event_line

    with open_store(db, create=False) as store:
        events = store.events(fleet_id, None, limit)
    if as_json:
        emit_json(events)
        return
    for e in events:
        click.echo(event_line(e))


@fleet.command("collect")
@click.option("--db", default=DEFAULT_DB, show_default=True,
              help="Where to store: sqlite:///FILE (WAL) or postgresql://user@host/db[?schema=name].")
@click.option("--fleet", "fleet_id", default=None, help="Only this fleet [default: every fleet].")
@click.option("--group", default="edgeslm", show_default=True,
              help="Shared-subscription group: collectors in one group split the messages.")
@click.option("--client-id", default=None, help="Stable MQTT client id (keeps the broker session) "
              "[default: derived from group, fleet and host name].")
@click.option("--batch-size", default=2000, show_default=True, type=click.IntRange(1, 1_000_000),
              help="Messages per store transaction.")
@click.option("--offline-after", default=60.0, show_default=True, type=click.FloatRange(0),
              help="Alert when a device is offline or silent this many seconds (0 = off).")
@click.option("--slo-ttft-p95-ms", default=None, type=click.FloatRange(0, min_open=True),
              help="Alert when p95 time to first token exceeds this.")
@click.option("--max-error-rate", default=None, type=click.FloatRange(0, 1),
              help="Alert when errors/requests exceed this (0..1).")
@click.option("--max-temperature", default=None, type=click.FloatRange(-273.15, 1000),
              help="Alert when a device is hotter (Celsius).")
@click.option("--no-alerts", is_flag=True, help="Do not evaluate alerts (run them on one collector per group).")
@click.option("--duration", default=None, type=click.FloatRange(0),
              help="Stop after this many seconds [default: run until Ctrl-C].")
@click.option("--report-every", default=10.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds between stats lines.")
@click.option("--connect-timeout", default=15.0, show_default=True, type=click.FloatRange(0.1),
              help="Fail (exit 1) when the broker cannot be reached or refuses us within this many seconds.")
@click.option("--ack-every", default=0.5, show_default=True, type=click.FloatRange(0, 60),
              help="Seconds the end-to-end acks of one device are gathered (one ack message per device per period; "
                   "raise it for large fleets: see docs/scaling.md).")
@click.option("--http-port", default=None, type=click.IntRange(0, 65535),
              help="Serve Prometheus /metrics and the dashboard (/) on this port (0: any free one).")
@click.option("--http-host", default="127.0.0.1", show_default=True, help="Address of --http-port (loopback by "
              "default: the page has no authentication).")
@broker_options
def collect_command(db, fleet_id, group, client_id, batch_size, offline_after, slo_ttft_p95_ms, max_error_rate,
                    max_temperature, no_alerts, duration, report_every, connect_timeout, ack_every, http_port, http_host,
                    broker):
    """Subscribe to fleet telemetry and store it; evaluate alert rules and publish them as events.

    \b
    Examples:
      edgeslm fleet collect                                     # mqtt://127.0.0.1:1883 -> sqlite:///fleet.db
      edgeslm fleet collect --fleet demo --slo-ttft-p95-ms 300 --max-temperature 80
      EDGESLM_MQTT_PASSWORD=... edgeslm fleet collect -b mqtts://hub:8883 --ca-file ca.crt -u collector \\
          --db postgresql://postgres@127.0.0.1/fleet --group eu --no-alerts
      edgeslm fleet collect --http-port 9464          # http://127.0.0.1:9464/ dashboard, /metrics for Prometheus

    The broker session outlives the collector (MQTT v5 session expiry), so messages published
    while it is down arrive when it returns; run several with the same --group (and distinct
    --client-id) to split the load. Malformed messages are counted in a dead-letter table.
    """
    from ..telemetry.collector import Collector, CollectorConfig
    from ..telemetry.stores import open_store

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    rules = None if no_alerts else _alert_rules(offline_after, slo_ttft_p95_ms, max_error_rate, max_temperature)
    cfg = CollectorConfig(broker=broker, fleet=fleet_id, group=group or None, client_id=client_id,
                          batch_size=batch_size, alerts=rules, ack_every_s=ack_every)  # refuses bad input before a store
    if http_port is not None:
        _need_prometheus()
    store = open_store(db)
    col = Collector(cfg, store, on_alert=lambda a: click.echo(f"ALERT {a.name} [{a.severity}] {a.message}"))
    current().note(f"collecting {fleet_id or 'all fleets'} from {broker.url} into {db} (group {group})")
    previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops like Ctrl-C
    web = None
    try:
        if http_port is not None:
            from ..telemetry.web import FleetWeb

            web = FleetWeb(col, store).start(http_host, http_port)
            click.echo(f"dashboard http://{http_host}:{web.port}/  metrics http://{http_host}:{web.port}/metrics",
                       err=True)
        _start_collecting(col, broker, connect_timeout)
        _collect_loop(col, duration, report_every)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        if web is not None:
            web.stop()
        col.stop()
        store.close()
    s = col.stats
    current().note(f"stopped: {s.received} received, {s.stored} stored, {s.duplicates} duplicates, "
               f"dead letters {dict(s.dead) or 0}")
    col.check()  # a collector that stopped working exits non-zero


def _alert_rules(offline_after, slo_ttft_p95_ms, max_error_rate, max_temperature):
    """The alert rules of the command's options (0 / unset: that rule is off)."""
    from ..telemetry.alerts import AlertRules

    return AlertRules(offline_after_s=offline_after or None,
                      ttft_p95_slo_s=slo_ttft_p95_ms / 1000 if slo_ttft_p95_ms else None,
                      error_rate=max_error_rate, temperature_c=max_temperature)


def _need_prometheus() -> None:
    """--http-port serves /metrics with prometheus-client: refuse early, naming the extra, without it."""
    from ..errors import TelemetryError

    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise TelemetryError("--http-port needs prometheus-client: pip install 'edgeslm[fleet]'") from None


def _start_collecting(col, broker, connect_timeout: float) -> None:
    """Start the collector; fail when the broker cannot be reached in time or refuses its subscriptions."""
    from ..errors import TelemetryError

    col.start()
    if not col.wait_connected(connect_timeout):
        col.check()
        raise TelemetryError(col.connect_error or f"cannot reach the MQTT broker at {broker.url} "
                             f"within {connect_timeout:g} s")
    if col.subscribe_error:
        raise TelemetryError(f"the broker refused the collector's subscriptions ({col.subscribe_error}): "
                             "check its access rules")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _collect_loop(col, duration, report_every) -> None:
    t0 = last = time.monotonic()
    prev = 0
    while duration is None or time.monotonic() - t0 < duration:
        time.sleep(0.2)
        col.check()
        if time.monotonic() - last >= report_every:
            s = col.stats
            rate = (s.received - prev) / (time.monotonic() - last)
            prev, last = s.received, time.monotonic()
            dead = sum(s.dead.values())
            current().note(f"{s.received} received ({rate:.0f}/s), {s.stored} stored, {s.duplicates} duplicates, "
                       f"{dead} dead letters, {s.alerts} alerts")


@fleet.command("simulate")
@click.option("--fleet", "fleet_id", default="demo", show_default=True)
@click.option("--devices", "-n", default=20, show_default=True, type=click.IntRange(1, 1_000_000),
              help="Simulated devices.")
@click.option("--rate", "-r", default=1.0, show_default=True, type=click.FloatRange(0),
              help="Telemetry messages per second per device (0 = as fast as possible).")
@click.option("--duration", "-d", default=60.0, show_default=True, type=click.FloatRange(0), help="Seconds to run.")
@click.option("--messages", default=None, type=click.IntRange(1),
              help="Stop after this many messages per device instead.")
@click.option("--connections", default=1, show_default=True, type=click.IntRange(1, 10_000),
              help="MQTT connections the devices share.")
@click.option("--processes", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Publisher processes (load tests).")
@click.option("--no-status", is_flag=True, help="Do not publish retained online/offline status per device.")
@broker_options
@json_option
def simulate_command(fleet_id, devices, rate, duration, messages, connections, processes, no_status, broker, as_json):
    """Publish telemetry from simulated devices, for demos and load tests.

    \b
    Examples:
      edgeslm fleet simulate --devices 20 --rate 1 --duration 120       # a demo fleet
      edgeslm fleet simulate -n 1000 --rate 0 --messages 50 --connections 4 --processes 2 --no-status  # load
    """
    from ..telemetry.simulate import SimConfig, simulate

    cfg = SimConfig(broker=broker, fleet=fleet_id, devices=devices, rate=rate,
                    duration_s=None if messages else duration, messages=messages, connections=connections,
                    processes=processes, status=not no_status)
    if not as_json:
        current().note(f"simulating {devices} devices in fleet {fleet_id} on {broker.url} "
                   f"({'max' if rate == 0 else f'{rate:g}/s each'}); Ctrl-C stops")
    res = simulate(cfg)
    out = {"sent": res.sent, "acked": res.acked, "refused": res.refused, "unrouted": res.unrouted,
           "elapsed_s": round(res.elapsed_s, 3),
           "msgs_per_s": round(res.sent / res.elapsed_s, 1) if res.elapsed_s else 0.0}
    if as_json:
        emit_json(out)
    else:
        click.echo(f"sent {out['sent']} ({out['msgs_per_s']:.0f} msg/s), acknowledged {out['acked']}, "
                   f"refused {out['refused']}, no subscriber {out['unrouted']}", err=True)
    if res.refused:
        sys.exit(1)
