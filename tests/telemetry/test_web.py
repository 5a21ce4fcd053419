"""The collector's /metrics scraped by a real Prometheus, and its dashboard in a real headless Chromium.

Both need Debian packages (``scripts/setup.sh`` installs them: prometheus, chromium,
chromium-driver) and skip with the reason when they are missing. A simulator publishes six
devices' telemetry through our own mosquitto to an in-process collector with its HTTP side on.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request

import pytest

from edgeslm.telemetry.broker import free_port
from edgeslm.telemetry.collector import Collector, CollectorConfig
from edgeslm.telemetry.mqtt import BrokerConfig
from edgeslm.telemetry.simulate import SimConfig, simulate
from edgeslm.telemetry.stores import open_store

from .helpers import wait_for

pytestmark = pytest.mark.mqtt
DEVICES = 6


@pytest.fixture
def live(mosquitto_factory, fleet_id, tmp_path):
    pytest.importorskip("prometheus_client", reason="prometheus-client not installed (pip install 'edgeslm[fleet]')")
    from edgeslm.telemetry.web import FleetWeb

    broker = BrokerConfig(port=mosquitto_factory(users=None).files.port)
    store = open_store(f"sqlite:///{tmp_path}/fleet.db")
    col = Collector(CollectorConfig(broker=broker, fleet=fleet_id, group="g", client_id=f"w-{fleet_id}"), store).start()
    assert col.wait_connected(30)
    web = FleetWeb(col, store).start("127.0.0.1", 0)
    stop = threading.Event()
    sim = threading.Thread(target=simulate, args=(SimConfig(broker=broker, fleet=fleet_id, devices=DEVICES, rate=2,
                                                            duration_s=120),), kwargs={"stop": stop}, daemon=True)
    sim.start()
    assert wait_for(lambda: len(store.devices(fleet_id)) == DEVICES and col.stats.stored >= DEVICES, 30)
    try:
        yield {"web": web, "col": col, "fleet": fleet_id, "url": f"http://127.0.0.1:{web.port}/", "broker": broker}
    finally:
        stop.set()
        sim.join(10)
        web.stop()
        col.stop()
        store.close()


def _publish_one(broker, fleet: str, device: str, model_id: str) -> None:
    from edgeslm.telemetry import schema, topics
    from edgeslm.telemetry.mqtt import connect, make_client

    client = make_client(broker, f"one-{time.time_ns()}")
    connect(client, broker, clean_start=True, wait=True)
    client.loop_start()
    body = schema.telemetry_body(fleet, device, 0, time.time(), 1.0, {}, {"edgeslm.bundle.id": model_id})
    client.publish(topics.topic(fleet, device, "telemetry"), schema.encode(body), qos=1).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def _rollout_and_alert(store, fleet: str) -> None:
    from edgeslm.telemetry import schema, topics
    from edgeslm.telemetry.stores.base import Batch

    store.save_rollout({"id": "r-demo", "fleet": fleet, "state": "halted", "stage": 0, "detail": "1 of 2 failed",
                        "created_at": time.time(), "spec": {"bundle": {"id": "v2"}, "stages": [0.5, 1.0]}})
    store.save_rollout_devices("r-demo", [("sim-00000", 0, "succeeded", ""), ("sim-00001", 0, "failed", "agreement"),
                                          ("sim-00002", 1, "pending", "")])
    body = schema.event_body(fleet, "sim-00002", time.time(), "alert.firing", "critical", "sim-00002: too hot",
                             "a-1", "collector", {"rule": "temperature"})
    store.write(Batch(events=[schema.parse(topics.topic(fleet, "sim-00002", "events"), schema.encode(body),
                                           received_at=time.time())]))


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_prometheus_scrapes_the_collector(live, tmp_path):
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.skip("Debian's prometheus is not installed (scripts/setup.sh: apt-get install prometheus)")
    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text("global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                   "scrape_configs:\n  - job_name: edgeslm\n"
                   f"    static_configs: [{{targets: ['127.0.0.1:{live['web'].port}']}}]\n")
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen([exe, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api/v1/query?query="

    def query(q: str) -> list:
        try:
            return _get(api + urllib.request.quote(q))["data"]["result"]
        except OSError:
            return []

    try:
        online = wait_for(lambda: query(f'edgeslm_devices{{fleet="{live["fleet"]}",state="online"}}'), 60, 0.5)
        assert online and float(online[0]["value"][1]) == DEVICES, (tmp_path / "prometheus.log").read_text()[-2000:]
        assert float(query('up{job="edgeslm"}')[0]["value"][1]) == 1.0
        ttft = query(f'edgeslm_gen_ai_server_time_to_first_token_seconds{{fleet="{live["fleet"]}",quantile="0.95"}}')
        assert {r["metric"]["device"] for r in ttft} == {f"sim-{i:05d}" for i in range(DEVICES)}
        assert all(r["metric"]["model"].startswith("smollm2-") and 0 < float(r["value"][1]) < 5 for r in ttft)
        for name in ("edgeslm_gen_ai_client_token_usage_tokens_total", "edgeslm_gen_ai_server_requests_total",
                     "edgeslm_hw_temperature_celsius", "edgeslm_system_memory_usage_bytes",
                     "edgeslm_gen_ai_server_time_per_output_token_seconds", "edgeslm_collector_dead_letters_total",
                     "edgeslm_collector_messages_received_total", "edgeslm_request_errors_total"):
            assert wait_for(lambda: query(name), 10, 0.5) or name.endswith("dead_letters_total"), name
        # counters grow between scrapes, and the ingest rate is seen
        first = float(query("edgeslm_collector_messages_received_total")[0]["value"][1])
        assert wait_for(lambda: float(query("edgeslm_collector_messages_received_total")[0]["value"][1]) > first, 20, 0.5)
        assert wait_for(lambda: query("edgeslm_collector_ingest_rate_messages_per_second > 0"), 20, 0.5)
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def test_dashboard_renders_the_devices_and_updates(live, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install 'edgeslm[test]')")
    chromium, driver_exe = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_exe:
        pytest.skip("Debian's chromium / chromium-driver are not installed (scripts/setup.sh installs them)")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        opts.add_argument(arg)
    hostile = '<img src=x onerror="window.pwned=1">'  # a device's model id: shown as text, never run
    _publish_one(live["broker"], live["fleet"], "evil", hostile)
    _rollout_and_alert(live["web"].store, live["fleet"])
    browser = webdriver.Chrome(service=Service(driver_exe), options=opts)
    try:
        browser.get(live["url"])
        rows = lambda: browser.find_elements(By.CSS_SELECTOR, "#devices tbody tr")  # noqa: E731
        assert wait_for(lambda: len(rows()) == DEVICES + 1, 30, 0.2), browser.page_source[:2000]
        names = {r.find_elements(By.TAG_NAME, "td")[0].text for r in rows()}
        assert names == {f"sim-{i:05d}" for i in range(DEVICES)} | {"evil"}
        assert all(r.find_elements(By.TAG_NAME, "td")[1].text == "online" for r in rows()
                   if r.find_elements(By.TAG_NAME, "td")[0].text != "evil")
        evil = [r for r in rows() if r.find_elements(By.TAG_NAME, "td")[0].text == "evil"][0]
        assert evil.find_elements(By.TAG_NAME, "td")[2].text == hostile
        assert browser.execute_script("return window.pwned") is None and not browser.find_elements(By.TAG_NAME, "img")
        received = int(browser.find_element(By.ID, "received").text)
        refreshes = int(browser.find_element(By.ID, "refreshes").text)
        # it updates by itself: more messages and another refresh, without reloading the page
        assert wait_for(lambda: int(browser.find_element(By.ID, "received").text) > received
                        and int(browser.find_element(By.ID, "refreshes").text) > refreshes, 20, 0.3)
        [r for r in rows() if r.find_elements(By.TAG_NAME, "td")[0].text == "sim-00000"][0].click()  # its charts
        assert wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#chart-ttft polyline"), 20, 0.3)
        assert browser.find_element(By.ID, "device-name").text == "sim-00000"
        rollout = browser.find_element(By.CSS_SELECTOR, "#rollouts .rollout")
        assert "r-demo" in rollout.text and "halted" in rollout.text
        bar = {e.get_attribute("class") for e in rollout.find_elements(By.CSS_SELECTOR, ".bar span")}
        assert bar == {"s-succeeded", "s-failed", "s-pending"}
        assert "sim-00002" in browser.find_element(By.ID, "alerts").text  # the firing alert
        logs = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
        assert not logs, logs  # no script errors, no resource that failed to load (nothing from a CDN)
        browser.save_screenshot(str(tmp_path / "dashboard.png"))
    finally:
        browser.quit()


def test_fleet_collect_http_port_serves_metrics_and_the_page(system_broker, fleet_id, tmp_path):
    pytest.importorskip("prometheus_client", reason="prometheus-client not installed (pip install 'edgeslm[fleet]')")
    import signal
    import sys

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edgeslm", "fleet", "collect", "-b",
                             f"mqtt://127.0.0.1:{system_broker.port}", "--db", f"sqlite:///{tmp_path}/f.db",
                             "--fleet", fleet_id, "--group", "h", "--client-id", f"h-{fleet_id}", "--no-alerts",
                             "--http-port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def get(path: str) -> bytes:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.read()
        except OSError:
            return b""

    try:
        assert wait_for(lambda: b"edgeslm_collector_messages_received_total" in get("/metrics"), 30, 0.2)
        simulate(SimConfig(broker=system_broker, fleet=fleet_id, devices=2, rate=0, duration_s=None, messages=3))
        assert wait_for(lambda: f'fleet="{fleet_id}"'.encode() in get("/metrics"), 20, 0.2)
        assert b"<title>edgeslm fleet</title>" in get("/") and b"textContent" in get("/dashboard.js")
        assert {d["device"] for d in json.loads(get("/api/fleet"))["devices"]} == {"sim-00000", "sim-00001"}
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        from .test_resilience import end_session

        end_session(system_broker, f"h-{fleet_id}")
    assert proc.returncode == 0 and b"dashboard http://127.0.0.1:" in err, err.decode()[-1500:]
