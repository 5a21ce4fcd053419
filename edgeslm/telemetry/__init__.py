"""Fleet telemetry over MQTT: schema, topics, device agent, collector, stores, alerts, simulator.

::

    edgeslm/v1/{fleet}/{device}/telemetry   one aggregate per interval, QoS 1, per-device seq
    edgeslm/v1/{fleet}/{device}/status      retained online/offline (last will on a crash)
    edgeslm/v1/{fleet}/{device}/events      alerts and one-off reports
    edgeslm/v1/{fleet}/{device}/commands    what a device may read (ACL)

    agent (device) ──MQTT v5──> Mosquitto ──$share/<group>──> collector(s) ──> SQLite | PostgreSQL
      └ on-disk queue until PUBACK                               └ alerts ──> events topic

Everything here needs only paho-mqtt (and psycopg for PostgreSQL); nothing imports torch.
The wire format is documented in docs/telemetry.md.
"""

from .agent import Agent, AgentConfig
from .alerts import AlertRules
from .collector import Collector, CollectorConfig
from .mqtt import BrokerConfig
from .schema import SCHEMA_VERSION
from .stores import MemoryStore, open_store

__all__ = ["SCHEMA_VERSION", "Agent", "AgentConfig", "AlertRules", "BrokerConfig", "Collector", "CollectorConfig",
           "MemoryStore", "open_store"]
