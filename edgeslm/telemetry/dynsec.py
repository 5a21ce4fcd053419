"""The fleet's broker access rules, as a Mosquitto dynamic-security plugin config (JSON).

Why not Mosquitto's ``acl_file``: in Mosquitto 2.0 it never checks a SUBSCRIBE (its source
says ``FIXME - implement ACL subscription strings``) and checks only ``read`` when delivering.
A device could therefore subscribe to the collectors' shared subscription
``$share/<group>/edgeslm/v1/<fleet>/+/telemetry``: the broker then hands it its round-robin
share of *other* devices' telemetry, refuses to deliver it (read denied), and the message is
gone -- one device with a few sessions swallowed up to 90 % of another's. The dynamic-security
plugin (shipped with Mosquitto 2.0) checks subscriptions, and everything not granted is
refused, so here:

* a **device** (username = device id) may publish only ``edgeslm/v1/<fleet>/<id>/{telemetry,
  status,events}`` and subscribe to / receive only its own ``commands`` and ``acks``;
* a **collector** may subscribe to the fleet (its ``$share`` groups included), receive it,
  and publish alert ``events`` and end-to-end ``acks``;
* an **operator** (``edgeslm fleet rollout``) may publish (retained) deployment commands on the
  fleet's ``commands`` topics and nothing else; the commands are signed too, so the broker
  rule keeps strangers out and the signature keeps a stolen operator password useless;
* an **admin** (for ``mosquitto_ctrl``) may only administer the plugin.

2.0's plugin has no ``%u`` substitution, so every device gets its own role; add devices to a
running broker with ``examples/mosquitto/fleet-acl.sh`` (``mosquitto_ctrl``) or regenerate
the file with :func:`dynsec_config`.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import os
from typing import Any

from ..errors import TelemetryError
from . import topics

ITERATIONS = 101  # what mosquitto_ctrl itself writes (sha512-pbkdf2)
PLUGIN_NAME = "mosquitto_dynamic_security.so"


def password_entry(password: str) -> dict[str, Any]:
    """The plugin's password fields: base64 sha512-pbkdf2 hash, base64 salt, iterations."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, ITERATIONS, 64)
    return {"password": base64.b64encode(digest).decode(), "salt": base64.b64encode(salt).decode(),
            "iterations": ITERATIONS}


def _acl(kind: str, topic: str) -> dict[str, Any]:
    return {"acltype": kind, "topic": topic, "allow": True}


def collector_role(fleet: str = "+") -> dict[str, Any]:
    root = f"edgeslm/v1/{fleet}"
    subs = [f"$share/+/{root}/+/telemetry", f"$share/+/{root}/+/events", f"{root}/+/telemetry", f"{root}/+/events",
            f"{root}/+/status"]
    return {"rolename": "edgeslm-collector",
            "acls": [_acl("subscribePattern", t) for t in subs] + [_acl("publishClientReceive", f"{root}/#"),
                                                                    _acl("publishClientSend", f"{root}/+/events"),
                                                                    _acl("publishClientSend", f"{root}/+/acks")]}


def operator_role(fleet: str = "+") -> dict[str, Any]:
    return {"rolename": "edgeslm-operator", "acls": [_acl("publishClientSend", f"edgeslm/v1/{fleet}/+/commands")]}


def device_role(device: str, fleet: str = "+") -> dict[str, Any]:
    topics.check_id(device, "device")
    root = f"edgeslm/v1/{fleet}/{device}"
    reads = [f"{root}/commands", f"{root}/acks"]
    sub_kind = "subscribeLiteral" if fleet != "+" else "subscribePattern"
    return {"rolename": f"edgeslm-device-{device}",
            "acls": [_acl("publishClientSend", f"{root}/{k}") for k in ("telemetry", "status", "events")]
            + [_acl(sub_kind, t) for t in reads] + [_acl("publishClientReceive", t) for t in reads]}


def admin_role() -> dict[str, Any]:
    t = "$CONTROL/dynamic-security/#"
    return {"rolename": "dynsec-admin", "acls": [_acl("publishClientSend", t), _acl("publishClientReceive", t),
                                                 _acl("subscribePattern", t)]}


def dynsec_config(users: dict[str, str], fleet: str = "+", collectors: tuple[str, ...] = ("collector",),
                  admin: tuple[str, str] | None = None, operators: tuple[str, ...] = ("operator",)) -> dict[str, Any]:
    """The plugin's JSON: ``users`` (name -> password) are devices unless named in ``collectors`` or ``operators``."""
    if fleet != "+":
        topics.check_id(fleet, "fleet")
    roles, clients = [collector_role(fleet), operator_role(fleet)], []
    for name, password in users.items():
        if name in collectors:
            role = "edgeslm-collector"
        elif name in operators:
            role = "edgeslm-operator"
        else:
            roles.append(device_role(name, fleet))
            role = roles[-1]["rolename"]
        clients.append({"username": name, **password_entry(password), "roles": [{"rolename": role}]})
    if admin is not None:
        roles.append(admin_role())
        clients.append({"username": admin[0], **password_entry(admin[1]), "roles": [{"rolename": "dynsec-admin"}]})
    return {"clients": clients, "roles": roles, "groups": [],
            # anything not granted above is refused: publishing, receiving and subscribing
            "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False, "subscribe": False,
                                 "unsubscribe": True}}


def plugin_path() -> str:
    """Where this system's Mosquitto keeps the dynamic-security plugin."""
    env = os.environ.get("EDGESLM_MOSQUITTO_DYNSEC")
    candidates = ([env] if env else []) + sorted(
        glob.glob(f"/usr/lib/*/{PLUGIN_NAME}") + glob.glob(f"/usr/lib/{PLUGIN_NAME}")
        + glob.glob(f"/usr/lib64/{PLUGIN_NAME}") + glob.glob(f"/usr/local/lib/{PLUGIN_NAME}")
        + glob.glob(f"/opt/homebrew/lib/{PLUGIN_NAME}"))
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise TelemetryError(f"Mosquitto's dynamic-security plugin ({PLUGIN_NAME}) was not found: install mosquitto "
                         ">= 2.0, or set EDGESLM_MOSQUITTO_DYNSEC to its path")
