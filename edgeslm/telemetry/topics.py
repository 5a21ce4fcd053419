"""Topic names: ``edgeslm/v1/{fleet}/{device}/{kind}``.

The version sits in the topic as well as in every payload so a broker ACL and a collector
subscription can tell wire generations apart without parsing a byte. Fleet and device ids
become topic levels, so they may not contain MQTT's separators or wildcards.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import TelemetryError

ROOT = "edgeslm/v1"
#: what a device publishes (telemetry, status, events) and reads (commands; acks from the collectors)
KINDS = ("telemetry", "status", "events", "commands", "acks")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def check_id(value: str, what: str) -> str:
    """Return ``value`` if it is a usable fleet/device id, else raise TelemetryError."""
    if not isinstance(value, str) or not _ID.match(value):
        raise TelemetryError(
            f"{what} id {value!r} is not valid: use 1-128 letters, digits, '.', '_', ':' or '-' "
            "(no '/', '+', '#' or spaces; MQTT uses them in topics)")
    return value


def topic(fleet: str, device: str, kind: str) -> str:
    """The topic a device uses for ``kind``: ``edgeslm/v1/{fleet}/{device}/{kind}``."""
    if kind not in KINDS:
        raise TelemetryError(f"unknown topic kind {kind!r}; one of {', '.join(KINDS)}")
    return f"{ROOT}/{check_id(fleet, 'fleet')}/{check_id(device, 'device')}/{kind}"


def fleet_filter(fleet: str | None, kind: str = "+") -> str:
    """Subscription filter for one fleet (or every fleet with ``None``) and one kind (or all)."""
    return f"{ROOT}/{check_id(fleet, 'fleet') if fleet else '+'}/+/{kind}"


def shared(group: str, topic_filter: str) -> str:
    """``$share/<group>/<filter>``: the broker hands each message to one member of the group."""
    check_id(group, "share group")
    return f"$share/{group}/{topic_filter}"


@dataclass(frozen=True)
class TopicParts:
    fleet: str
    device: str
    kind: str


def parse(name: str) -> TopicParts:
    """Split a topic into fleet, device and kind; TelemetryError if it is not one of ours."""
    parts = name.split("/")
    if len(parts) != 5 or "/".join(parts[:2]) != ROOT or parts[4] not in KINDS:
        raise TelemetryError(f"topic {name!r} is not edgeslm/v1/<fleet>/<device>/<kind>")
    if not _ID.match(parts[2]) or not _ID.match(parts[3]):
        raise TelemetryError(f"topic {name!r} has an invalid fleet or device id")
    return TopicParts(parts[2], parts[3], parts[4])
