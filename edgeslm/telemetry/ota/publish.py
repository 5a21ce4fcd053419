"""The controller's MQTT connection: retained QoS 1 commands, each confirmed by the broker."""

from __future__ import annotations

import threading
import uuid

from ...errors import TelemetryError
from ..mqtt import BrokerConfig, connect, make_client


class CommandPublisher:
    """``publish(topic, payload)`` returns once the broker has it (PUBACK 0 or 16), else TelemetryError."""

    def __init__(self, broker: BrokerConfig, client_id: str | None = None, timeout_s: float = 15.0):
        self.broker, self.timeout_s = broker, timeout_s
        self._codes: dict[int, int] = {}
        self._cv = threading.Condition()
        self._connected = threading.Event()
        self.refused: str | None = None
        self.client = make_client(broker, client_id or f"edgeslm-rollout-{uuid.uuid4().hex[:10]}")
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        connect(self.client, broker, clean_start=True, wait=True)
        self.client.loop_start()
        if not self._connected.wait(timeout_s):
            self.close()
            raise TelemetryError(self.refused or f"cannot reach the MQTT broker at {broker.url}")

    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        if int(getattr(reason_code, "value", reason_code)) == 0:
            self._connected.set()
        else:
            self.refused = f"the broker at {self.broker.url} refused the rollout controller: {reason_code}"

    def _on_publish(self, client, userdata, mid, reason_code, properties=None):
        with self._cv:
            self._codes[mid] = int(getattr(reason_code, "value", reason_code))
            self._cv.notify_all()

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=True)
        with self._cv:
            if not self._cv.wait_for(lambda: info.mid in self._codes, self.timeout_s):
                raise TelemetryError(f"the broker did not confirm the command on {topic}")
            code = self._codes.pop(info.mid)
        if code >= 128:
            raise TelemetryError(f"the broker refused the command on {topic} (reason {code}): check the "
                                 "operator's access rules (examples/mosquitto/fleet-acl.sh operator)")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
