"""Broker addresses and MQTT v5 clients, configured the same way for agent, collector and simulator.

``mqtt://host:1883`` is plain TCP, ``mqtts://host:8883`` is TLS; ``user:password@`` may sit in
the URL or come from options (the CLI reads ``EDGESLM_MQTT_PASSWORD`` so it stays out of
shell history). Client certificates (``cert_file`` + ``key_file``) work with either.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from ..errors import TelemetryError


@dataclass
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False  # mqtts:// -> TLS; the broker's certificate is verified against ca_file (or system CAs)
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None  # CA that signed the broker's certificate
    cert_file: str | None = None  # client certificate, for brokers that authenticate devices by cert
    key_file: str | None = None
    insecure: bool = False  # skip hostname check (self-signed lab brokers only)
    keepalive: int = 15  # seconds; the broker fires the last will after ~1.5x this without traffic

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> "BrokerConfig":
        """Parse ``mqtt[s]://[user[:password]@]host[:port]``; keyword overrides win when not None."""
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise TelemetryError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise TelemetryError(f"broker URL {url!r}: bad port") from None
        cfg = cls(host=parts.hostname or "127.0.0.1", port=port, tls=tls,
                  username=unquote(parts.username) if parts.username else None,
                  password=unquote(parts.password) if parts.password else None)
        for key, value in overrides.items():
            if value is not None:
                setattr(cfg, key, value)
        return cfg

    @property
    def url(self) -> str:
        """The address without credentials, for logs and errors."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def make_client(cfg: BrokerConfig, client_id: str, max_inflight: int = 1000):
    """A paho MQTT v5 client with credentials and TLS applied (not yet connected)."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    # paho's default of 20 unacknowledged QoS 1 messages caps throughput (FINDINGS: MQTT).
    client.max_inflight_messages_set(max_inflight)
    client.reconnect_delay_set(min_delay=1, max_delay=10)
    if cfg.username is not None:
        client.username_pw_set(cfg.username, cfg.password)
    if cfg.tls:
        try:
            client.tls_set(ca_certs=cfg.ca_file, certfile=cfg.cert_file, keyfile=cfg.key_file,
                           cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise TelemetryError(f"TLS setup for {cfg.url} failed: {exc}") from exc
        if cfg.insecure:
            client.tls_insecure_set(True)
    return client


def connect_properties(session_expiry_s: int | None = None, receive_maximum: int | None = None):
    """CONNECT properties: session expiry keeps a session (and its queue) across disconnects."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)
    if session_expiry_s:
        props.SessionExpiryInterval = int(session_expiry_s)
    if receive_maximum:
        props.ReceiveMaximum = int(receive_maximum)
    return props


def connect(client, cfg: BrokerConfig, clean_start: bool, properties=None, wait: bool = False) -> None:
    """Start connecting in the background (paho keeps retrying); with ``wait`` fail fast instead."""
    try:
        if wait:
            client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive, clean_start=clean_start, properties=properties)
        else:
            client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive, clean_start=clean_start,
                                 properties=properties)
    except (OSError, ValueError) as exc:
        raise TelemetryError(f"cannot reach the MQTT broker at {cfg.url}: {exc}") from exc


def reason_ok(reason_code: Any) -> bool:
    """True for a successful (or 'no matching subscribers') paho v2 ReasonCode or int."""
    value = getattr(reason_code, "value", reason_code)
    return int(value) in (0, 16)
