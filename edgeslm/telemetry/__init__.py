"""Fleet telemetry over MQTT: schema, topics, device agent, collector, stores, alerts, simulator.

::

    edgeslm/v1/{fleet}/{device}/telemetry   one aggregate per interval, QoS 1, per-device seq
    edgeslm/v1/{fleet}/{device}/status      retained online/offline (last will on a crash)
    edgeslm/v1/{fleet}/{device}/events      alerts and one-off reports
    edgeslm/v1/{fleet}/{device}/commands    signed deployment commands (ota/), retained
    edgeslm/v1/{fleet}/{device}/acks        what a collector has stored (end to end)

    agent (device) ──MQTT v5──> Mosquitto ──$share/<group>──> collector(s) ──> SQLite | PostgreSQL
      ├ on-disk queue until a collector acks                      ├ alerts ──> events topic
      └ A/B slots (ota.device) <── fleet rollout (ota.controller) └ /metrics + dashboard (web.py)

Everything here needs only paho-mqtt (and psycopg for PostgreSQL); nothing imports torch.
The wire format is documented in docs/telemetry.md.
"""

from .agent import Agent, AgentConfig
from .alerts import AlertRules
from .collector import Collector, CollectorConfig
from .mqtt import BrokerConfig
from .schema import SCHEMA_VERSION
from .stores import MemoryStore, open_store

try:  # the msgspec fast path (the `fleet` extra) registers itself with schema.parse
    from . import fastpath  # noqa: F401
except ImportError:  # pragma: no cover - a device install without the extra
    pass

__all__ = ["SCHEMA_VERSION", "Agent", "AgentConfig", "AlertRules", "BrokerConfig", "Collector", "CollectorConfig",
           "MemoryStore", "open_store"]
