"""edgeslm agent"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import click

from . import cli
from ._output import current
from ..telemetry.cliopts import broker_options


@cli.command("agent")
@click.option("--bundle", default=None, type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="Bundle directory to serve (edgeslm export ... -o DIR); with --state-dir, the first one only.")
@click.option("--fleet", "fleet_id", required=True, help="Fleet id (topic level; ACLs are usually per fleet).")
@click.option("--device", required=True, help="This device's id; also its MQTT username under the fleet ACL.")
@click.option("--interval", default=10.0, show_default=True, type=click.FloatRange(0.1, 86400),
              help="Seconds per telemetry aggregate.")
@click.option("--buffer", "buffer_path", default=None, type=click.Path(path_type=Path, dir_okay=False),
              help="On-disk queue for store-and-forward [default: ~/.cache/edgeslm/agent-FLEET-DEVICE.db].")
@click.option("--buffer-max", default=100_000, show_default=True, type=click.IntRange(1, 100_000_000),
              help="Messages kept while the broker is unreachable; older ones are dropped and counted.")
@click.option("--http", "http_addr", default="127.0.0.1:8080", show_default=True,
              help="HOST:PORT of the local request endpoint (POST /generate, /chat; GET /health); 'off' disables.")
@click.option("--openai", "openai_addr", default="off", show_default=True,
              help="HOST:PORT of an OpenAI-compatible server (edgeslm serve) whose requests the agent "
                   "measures like its own; 'off' disables. Needs the serve extra.")
@click.option("--api-key", envvar="EDGESLM_API_KEY", default=None,
              help="API key the --openai server requires [env EDGESLM_API_KEY].")
@click.option("--threads", default=None, type=click.IntRange(1, 1024), help="Engine threads [default: runtime's choice].")
@click.option("--delivery", type=click.Choice(["end-to-end", "broker"]), default="end-to-end", show_default=True,
              help="Keep each message until a collector acknowledges it (end-to-end), or only until the "
                   "broker's PUBACK (broker: for collectors older than these acks).")
@click.option("--key", "keys", multiple=True, type=click.Path(path_type=Path),
              help="Trusted public key: refuse the bundle unless it is signed by one (repeatable).")
@click.option("--state-dir", default=None, type=click.Path(path_type=Path, file_okay=False),
              help="Take model updates (edgeslm fleet rollout): A/B bundle slots and their state live here; "
                   "needs --key (only signed deployments are accepted).")
@click.option("--artifact-ca-file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="CA certificate of the artifact server (https bundle URLs) [default: system CAs].")
@broker_options
def agent_command(bundle, fleet_id, device, interval, buffer_path, buffer_max, http_addr, openai_addr, api_key,
                  threads, delivery, keys, state_dir, artifact_ca_file, broker):
    """Serve BUNDLE on this device and publish its telemetry to the fleet broker.

    \b
    Examples:
      edgeslm agent --bundle out/smollm2-onnx --broker mqtt://hub:1883 --fleet demo --device pi-01
      EDGESLM_MQTT_PASSWORD=s3cret edgeslm agent --bundle /opt/model --fleet shop --device till-7 \\
          --broker mqtts://hub.example.com:8883 --ca-file ca.crt -u till-7
      curl -s 127.0.0.1:8080/generate -d '{"prompt": "Hello", "max_new_tokens": 16}'
      edgeslm agent --bundle out/smollm2-onnx --fleet demo --device pi-01 --openai 127.0.0.1:8000

    Every request (HTTP or Python API) is measured; once per --interval the agent publishes a
    telemetry aggregate (QoS 1) on edgeslm/v1/FLEET/DEVICE/telemetry. A message stays in the
    on-disk buffer until a collector confirms it has stored it (edgeslm/v1/FLEET/DEVICE/acks);
    while the broker is away they wait there and are sent oldest first on reconnect. The retained
    status topic says online/offline; the broker's last will covers crashes. Ctrl-C or SIGTERM
    stops cleanly (final interval flushed, status 'offline').
    """
    from ..telemetry.agent import Agent, AgentConfig
    from ..telemetry.serve import serve

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if buffer_path is None:
        buffer_path = Path.home() / ".cache" / "edgeslm" / f"agent-{fleet_id}-{device}.db"
    config = AgentConfig(fleet=fleet_id, device=device, broker=broker, interval_s=interval, buffer_path=buffer_path,
                         buffer_max=buffer_max, end_to_end=delivery == "end-to-end")  # refuses bad ids first
    http = _host_port(http_addr, "--http") if http_addr != "off" else None  # bad addresses before the model loads
    openai = _host_port(openai_addr, "--openai") if openai_addr != "off" else None
    _check_sources(bundle, state_dir, keys, openai)
    agent = Agent(config)
    options = {"threads": threads} if threads else {}
    model, deployer = _attach_model(agent, bundle, state_dir, list(keys), options, artifact_ca_file)
    server = serve(agent, *http) if http else None
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())  # restored on the way out
    agent.start()
    if deployer is not None:
        deployer.start()
    current().note(f"agent {fleet_id}/{device} -> {broker.url}; buffer {buffer_path}"
               + (f"; requests on http://{http_addr}" if server else ""))
    try:
        if openai:
            _serve_openai(model, agent, openai, api_key)  # returns on SIGTERM / Ctrl-C
        while not openai and not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop(agent, server, deployer)


def _check_sources(bundle, state_dir, keys, openai) -> None:
    """A bundle or a state dir to serve; a state dir only with trusted keys and without --openai."""
    from ..errors import TelemetryError

    if state_dir is None and bundle is None:
        raise TelemetryError("give --bundle (and --state-dir to take model updates)")
    if state_dir is not None and (not keys or openai):
        raise TelemetryError("--state-dir needs --key (unsigned updates are refused) and cannot be combined "
                             "with --openai (that server keeps the model it started with)")


def _attach_model(agent, bundle, state_dir, keys: list, options: dict, artifact_ca_file):
    """Load the model the agent serves: ``bundle``, or with a state dir the Deployer's current slot
    (booting from ``bundle`` the first time). Returns (model, deployer or None)."""
    import edgeslm  # the runtime only: the agent never imports torch

    if state_dir is None:
        model = edgeslm.load(bundle, engine_options=options, trusted_keys=keys or None)
        agent.attach(model)
        return model, None
    from ..telemetry.ota.device import Deployer

    deployer = Deployer(state_dir, keys, lambda p: edgeslm.load(p, engine_options=options, trusted_keys=keys),
                        agent.event, agent.config.fleet, agent.config.device, artifact_ca_file)
    model = deployer.boot(bundle)
    agent.attach(model)
    agent.use_deployer(deployer)
    return model, deployer


def _stop(agent, server, deployer) -> None:
    """Stop the endpoint, the deployer and the agent (its final interval flushed); say what was sent."""
    if server is not None:
        server.shutdown()
    if deployer is not None:
        deployer.stop()
    agent.stop()
    agent.model.close()
    s = agent.stats()
    current().note(f"agent stopped: {s['delivered']} messages confirmed by a collector, {s['acked']} by the broker, "
                   f"{s['buffered']} still buffered, {s['dropped']} dropped")


def _host_port(addr: str, flag: str) -> tuple[str, int]:
    from ..errors import TelemetryError

    host, _, port = addr.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise TelemetryError(f"{flag} {addr!r}: expected HOST:PORT (port 0-65535) or 'off'")
    return host or "127.0.0.1", int(port)


def _serve_openai(model, agent, addr: tuple[str, int], api_key) -> None:
    """The OpenAI-compatible server in the foreground; every request lands in the agent's telemetry
    (the agent is attached to the model) and shares its model lock with the --http endpoint."""
    from ..server import run_server
    from .serve_cmd import serve_config

    config = serve_config(model, None, api_key, 8, 1024, None, 1 << 20)
    current().note(f"OpenAI-compatible API on http://{addr[0]}:{addr[1]}/v1")
    run_server(model, config, host=addr[0], port=addr[1], telemetry=agent, lock=agent.model_lock)
