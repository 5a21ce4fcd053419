"""Deployment commands: what the controller tells one device, signed with the release key (ed25519).

Wire form on ``edgeslm/v1/<fleet>/<device>/commands`` (retained, QoS 1)::

    {"schema_version": 1, "kind": "command", "key_id": "3f1c0a9e5b7d2c44",
     "signature": "<base64 ed25519 over the UTF-8 bytes of body>",
     "body": "{\"schema_version\":1,\"action\":\"deploy\",\"id\":\"r1:deploy:1\",\"fleet\":\"demo\",...}"}

``body`` is the command as JSON *text*: the signature covers those exact bytes, so nothing is
canonicalised. Its fields: ``action`` (deploy | rollback | cancel), ``id`` (unique, makes a
redelivered command a no-op), ``rollout``, ``fleet`` and ``device`` (a command for another
device is refused: it cannot be replayed elsewhere), ``issued_at``/``expires_at``, and for a
deploy ``bundle`` {id, url, manifest_sha256, bytes} and ``health`` (see :class:`Health`).
The keys are the same Ed25519 keys that sign bundles (``edgeslm keys generate``); a device
trusts the public keys given with ``edgeslm agent --key``.
"""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ...errors import TelemetryError
from .. import topics

SCHEMA_VERSION = 1
ACTIONS = ("deploy", "rollback", "cancel")
MAX_COMMAND_BYTES = 256 * 1024  # a deploy with its smoke reference is a few KB
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class CommandError(TelemetryError):
    """A command the device refuses; ``reason`` is one word for the event (signature, expired, ...)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.rollout: str | None = None  # as the (unverified) body says, for the refusal event
        self.command: str | None = None


@dataclass
class Health:
    """What a device checks after the swap before it keeps the new bundle (thresholds travel in the command)."""

    smoke: list[dict[str, list[int]]] = field(default_factory=list)  # [{ids, continuation}] from the reference
    min_top1_agreement: float = 0.9  # teacher-forced top-1 agreement with the reference continuation
    max_ttft_ratio: float | None = 2.0  # new TTFT p50 <= this x the previous bundle's (None: not checked)
    min_tok_s_ratio: float | None = 0.5  # new decode tok/s >= this x the previous bundle's
    max_ttft_s: float | None = None  # absolute limits, when the fleet has an SLO
    min_tok_s: float | None = None
    crash_loop_boots: int = 3  # agent restarts while on trial before it rolls back by itself
    probation_s: float = 30.0  # the new bundle stays on trial (restarts counted) this long after the check

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Health":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        h = cls(**known)
        for name in ("min_top1_agreement", "probation_s"):
            _number(getattr(h, name), f"health.{name}")
        for name in ("max_ttft_ratio", "min_tok_s_ratio", "max_ttft_s", "min_tok_s"):
            if getattr(h, name) is not None:
                _number(getattr(h, name), f"health.{name}")
        if type(h.crash_loop_boots) is not int or not 1 <= h.crash_loop_boots <= 100:
            raise CommandError("invalid", "health.crash_loop_boots must be an integer 1..100")
        if type(h.smoke) is not list or len(h.smoke) > 16:
            raise CommandError("invalid", "health.smoke must be a list of at most 16 prompts")
        for p in h.smoke:
            if type(p) is not dict or not _ids(p.get("ids")) or not _ids(p.get("continuation")):
                raise CommandError("invalid", "health.smoke entries need token id lists 'ids' and 'continuation'")
        return h


def _number(v: Any, what: str) -> None:
    if type(v) not in (int, float) or not 0 <= v <= 1e9:
        raise CommandError("invalid", f"{what} must be a number from 0 to 1e9")


def _ids(v: Any) -> bool:
    return type(v) is list and 0 < len(v) <= 4096 and all(type(t) is int and 0 <= t < 2**31 for t in v)


@dataclass
class Command:
    action: str
    id: str
    rollout: str
    fleet: str
    device: str
    issued_at: float
    expires_at: float
    bundle: dict[str, Any] | None = None  # deploy: {id, url, manifest_sha256, bytes}
    health: Health | None = None  # deploy only
    key_id: str = ""  # set when verified

    def body(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "key_id" and v is not None}
        d["schema_version"] = SCHEMA_VERSION
        return d


def sign(cmd: Command, private_key: Any) -> bytes:
    """The wire form of ``cmd`` signed with ``private_key`` (PEM path or key object)."""
    from ...bundle.signing import key_id, load_private_key

    key = load_private_key(private_key)
    text = json.dumps(cmd.body(), separators=(",", ":"), sort_keys=True)
    sig = key.sign(text.encode("utf-8"))
    return json.dumps({"schema_version": SCHEMA_VERSION, "kind": "command", "key_id": key_id(key.public_key()),
                       "signature": base64.b64encode(sig).decode("ascii"), "body": text}).encode("utf-8")


def verify(payload: bytes, trusted_keys: list[Any], fleet: str, device: str, now: float | None = None) -> Command:
    """The command in ``payload`` if a trusted key signed it for this fleet and device and it has not
    expired; else CommandError with a reason (malformed, unsigned, signature, untrusted, device, expired)."""
    try:
        return _verify(payload, trusted_keys, fleet, device, now)
    except CommandError as exc:
        exc.rollout, exc.command = _claimed(payload)
        raise


def _claimed(payload: bytes) -> tuple[str | None, str | None]:
    """The rollout and command id a refused command *claims* (reported as such, never trusted)."""
    try:
        b = json.loads(json.loads(payload)["body"])
        ok = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")
        return (str(b["rollout"]) if ok.match(str(b.get("rollout"))) else None,
                str(b["id"]) if ok.match(str(b.get("id"))) else None)
    except Exception:
        return None, None


def _verify(payload: bytes, trusted_keys: list[Any], fleet: str, device: str, now: float | None) -> Command:
    from cryptography.exceptions import InvalidSignature

    from ...bundle.signing import key_id, load_public_key

    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError("malformed", f"{len(payload)} bytes is more than a command may have")
    try:
        env = json.loads(payload)
        text, kid, sig = env["body"], env.get("key_id"), env.get("signature")
        if type(env) is not dict or env.get("kind") != "command" or type(text) is not str:
            raise ValueError("not a command envelope")
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise CommandError("malformed", f"not a command ({type(exc).__name__})") from None
    if env.get("schema_version") != SCHEMA_VERSION:
        raise CommandError("schema_version", f"command schema_version {env.get('schema_version')!r}; "
                           f"this agent reads {SCHEMA_VERSION}")
    if not sig or not kid:
        raise CommandError("unsigned", "the command carries no signature")
    keys = {key_id(k): k for k in (load_public_key(k) for k in trusted_keys)}
    key = keys.get(str(kid))
    if key is None:
        raise CommandError("untrusted", f"signed by key {str(kid)[:64]}, which this device does not trust")
    try:
        key.verify(base64.b64decode(sig, validate=True), text.encode("utf-8"))
    except (InvalidSignature, ValueError, TypeError):
        raise CommandError("signature", f"the signature by key {kid} does not match the command") from None
    cmd = _parse_body(text)
    cmd.key_id = str(kid)
    if cmd.fleet != fleet or cmd.device != device:
        raise CommandError("device", f"the command is for {cmd.fleet}/{cmd.device}, not {fleet}/{device}")
    if (now if now is not None else time.time()) > cmd.expires_at:
        raise CommandError("expired", f"the command expired at {cmd.expires_at:.0f}")
    return cmd


def _parse_body(text: str) -> Command:
    try:
        b = json.loads(text)
        if type(b) is not dict or b.get("schema_version") != SCHEMA_VERSION or b.get("action") not in ACTIONS:
            raise ValueError("unknown action or schema_version")
        cmd = Command(action=b["action"], id=str(b["id"]), rollout=str(b["rollout"]), fleet=str(b["fleet"]),
                      device=str(b["device"]), issued_at=float(b["issued_at"]), expires_at=float(b["expires_at"]))
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise CommandError("malformed", f"signed, but not a valid command ({exc})") from None
    if not re.match(r"^[A-Za-z0-9._:-]{1,200}$", cmd.id) or not re.match(r"^[A-Za-z0-9._:-]{1,128}$", cmd.rollout):
        raise CommandError("malformed", "command id / rollout id must be 1-200 letters, digits, '.', '_', ':' or '-'")
    if cmd.action == "deploy":
        bundle = b.get("bundle")
        if (type(bundle) is not dict or type(bundle.get("url")) is not str
                or not str(bundle["url"]).startswith(("http://", "https://"))
                or not _SHA256.match(str(bundle.get("manifest_sha256", "")))):
            raise CommandError("malformed", "a deploy needs bundle.url (http/https) and bundle.manifest_sha256")
        cmd.bundle = {"id": str(bundle.get("id") or ""), "url": bundle["url"],
                      "manifest_sha256": bundle["manifest_sha256"], "bytes": int(bundle.get("bytes") or 0)}
        cmd.health = Health.from_dict(b.get("health") or {})
    return cmd


def command_topic(fleet: str, device: str) -> str:
    return topics.topic(fleet, device, "commands")
