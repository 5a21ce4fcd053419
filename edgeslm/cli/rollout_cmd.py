"""edgeslm fleet rollout BUNDLE | status | pause | resume | abort; edgeslm fleet serve-artifacts."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import click

from ._common import emit_json, json_option
from ._output import GROUP_FLAGS, VerbGroup, current
from .fleet_cmd import DEFAULT_DB, fleet
from ..telemetry.cliopts import broker_options


class _DefaultToStart(VerbGroup):
    """``rollout BUNDLE ...`` starts one; ``rollout status|pause|resume|abort ID`` manage it."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help", *GROUP_FLAGS):
            args = ["start", *args]
        return super().parse_args(ctx, args)


@fleet.group("rollout", cls=_DefaultToStart)
def rollout():
    """Ship a signed bundle to a fleet in stages, halting and rolling back on failures.

    \b
    Examples:
      edgeslm fleet serve-artifacts out/ &                # or any HTTP server with Range support
      edgeslm fleet rollout out/smollm2-int8 --fleet demo --key release.key \\
          --artifact-url http://hub:8700/smollm2-int8/ --canary 10% --stages 50%,100% --max-failures 0
      edgeslm fleet rollout status demo.1a2b3c4d5e6f
      edgeslm fleet rollout pause demo.1a2b3c4d5e6f      # resume / abort the same way

    Devices run `edgeslm agent --state-dir DIR --key release.pub`: each checks the command's
    signature, downloads the bundle into its inactive slot, verifies every hash, swaps, runs the
    health check (parity smoke test against a reference + TTFT/tok/s against its previous
    bundle) and keeps the new bundle or rolls back by itself. Progress comes back as ota.*
    events through the collectors into --db, where the rollout is recorded too.
    Options of a new rollout: `edgeslm fleet rollout start --help`.
    """


def _store(db, create=True):
    from ..telemetry.stores import open_store

    return open_store(db, create=create)


@rollout.command("start")
@click.argument("bundle", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--fleet", "fleet_id", required=True, help="Fleet to update.")
@click.option("--key", "key", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Private Ed25519 key that signs the commands (edgeslm keys generate); devices trust its .pub.")
@click.option("--artifact-url", required=True, help="HTTP(S) URL of the bundle directory as devices see it.")
@click.option("--artifact-ca-file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="CA certificate of an https --artifact-url [default: system CAs].")
@click.option("--canary", default="10%", show_default=True, help="Share of the fleet in the first stage.")
@click.option("--stages", default="50%,100%", show_default=True, help="Later stages (cumulative shares).")
@click.option("--max-failures", default="0", show_default=True,
              help="Failures a stage may have before it halts and rolls back: a count or a share ('10%').")
@click.option("--devices", default=None, help="Comma-separated device ids [default: every device the store knows].")
@click.option("--reference-bundle", default=None, type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="Bundle whose greedy answers the new one must match on devices [default: BUNDLE itself, "
                   "i.e. the device's kernels vs this machine's]; e.g. the fp32 export or the running bundle.")
@click.option("--min-agreement", default=0.9, show_default=True, type=click.FloatRange(0, 1),
              help="Teacher-forced top-1 agreement with the reference a device requires.")
@click.option("--max-ttft-ratio", default=2.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="New TTFT may be at most this times the previous bundle's on the same device.")
@click.option("--min-tok-s-ratio", default=0.5, show_default=True, type=click.FloatRange(0),
              help="New decode tok/s must be at least this times the previous bundle's.")
@click.option("--probation", default=60.0, show_default=True, type=click.FloatRange(0),
              help="Seconds a new bundle stays on trial (agent restarts counted) after its health check.")
@click.option("--stage-timeout", default=900.0, show_default=True, type=click.FloatRange(1),
              help="Seconds a device may take; after that it counts as failed.")
@click.option("--db", default=DEFAULT_DB, show_default=True, help="Store the collectors write (events) and "
              "the rollout is recorded in.")
@click.option("--detach", is_flag=True, help="Publish the first stage and return (resume later drives it on).")
@broker_options
@json_option
def rollout_start(bundle, fleet_id, key, artifact_url, artifact_ca_file, canary, stages, max_failures, devices,
                  reference_bundle, min_agreement, max_ttft_ratio, min_tok_s_ratio, probation, stage_timeout, db,
                  detach, broker, as_json):
    """Roll BUNDLE out to FLEET (`rollout BUNDLE` is short for `rollout start BUNDLE`; the same
    command again resumes the same rollout)."""
    from ..telemetry import topics
    from ..telemetry.ota.controller import RolloutSpec, parse_stages, rollout_id

    topics.check_id(fleet_id, "fleet")
    shares = parse_stages(canary, stages)
    if not (max_failures.rstrip("%").replace(".", "", 1).isdigit()):
        raise click.BadParameter("a count like 2 or a share like 10%", param_hint="--max-failures")
    raw = (bundle / "manifest.json").read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    _check_signed(bundle, key)
    _check_artifact(artifact_url, sha, artifact_ca_file)
    with _store(db) as store:
        rid = rollout_id(fleet_id, sha)
        if store.rollout(rid) is None:
            health = {"smoke": _reference(reference_bundle or bundle), "min_top1_agreement": min_agreement,
                      "max_ttft_ratio": max_ttft_ratio, "min_tok_s_ratio": min_tok_s_ratio or None,
                      "probation_s": probation}
            spec = RolloutSpec(fleet=fleet_id, stages=shares, max_failures=max_failures, health=health,
                               stage_timeout_s=stage_timeout,
                               bundle={"id": bundle.name, "url": artifact_url, "manifest_sha256": sha,
                                       "bytes": sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file())})
            ids = [d.strip() for d in devices.split(",") if d.strip()] if devices else \
                [r.device for r in store.devices(fleet_id)]
            _controller(store, broker, key).create(rid, spec, ids)
            current().note(f"rollout {rid}: {bundle.name} to {len(ids)} devices of {fleet_id} in "
                           f"{len(shares)} stages")
        else:
            current().note(f"rollout {rid} exists: resuming it")
        _drive(store, broker, key, rid, detach, as_json)


def _controller(store, broker, key):
    from ..telemetry.ota.controller import Controller
    from ..telemetry.ota.publish import CommandPublisher

    pub = CommandPublisher(broker)
    return Controller(store, pub.publish, key)


def _drive(store, broker, key, rid, detach, as_json) -> None:
    ctl = _controller(store, broker, key)
    seen = {}

    def show(r, devices):
        counts = {}
        for d in devices:
            counts[d["state"]] = counts.get(d["state"], 0) + 1
        line = f"{r['state']} stage {r['stage'] + 1}/{len(r['spec']['stages'])}: " + \
            ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        if seen.get("line") != line:
            current().note(line)
            seen["line"] = line

    r = ctl.step(rid) if detach else ctl.run(rid, poll_s=0.5, on_change=show)
    _print(store, r, as_json)
    if r["state"] in ("halted", "aborted"):
        raise SystemExit(1)


def _print(store, r, as_json) -> None:
    devices = store.rollout_devices(r["id"])
    if as_json:
        emit_json({"rollout": r, "devices": devices})
        return
    click.echo(f"rollout {r['id']} ({r['spec']['bundle']['id']} -> {r['fleet']}): {r['state']}; {r['detail']}")
    for d in devices:
        click.echo(f"  stage {d['stage'] + 1}  {d['device']:<24} {d['state']:<12} {d['detail'][:90]}")


def _reference(path: Path) -> list:
    """Greedy continuations of the parity prompts by ``path``: what devices must still answer."""
    import edgeslm
    from ..telemetry.ota.health import make_reference
    from ..verify.parity import DEFAULT_PROMPTS

    with edgeslm.load(path) as model:
        return make_reference(model, DEFAULT_PROMPTS[:2], tokens=16)


def _check_signed(bundle: Path, key) -> None:
    """Devices load only bundles a trusted key signed: refuse here what every device would refuse."""
    from ..bundle.signing import load_private_key, verify_bundle_signature
    from ..errors import SignatureError, TelemetryError

    try:
        verify_bundle_signature(bundle, [load_private_key(key).public_key()])
    except SignatureError as exc:
        raise TelemetryError(f"{exc} (devices would refuse it: `edgeslm keys sign {bundle} --key KEY` first)") from None


def _check_artifact(url: str, sha: str, ca_file: str | None = None) -> None:
    """The artifact server must serve this very manifest (a typo in the URL fails here, not on devices)."""
    import ssl
    import urllib.request

    from ..errors import TelemetryError

    ctx = ssl.create_default_context(cafile=ca_file) if ca_file else None
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/manifest.json", timeout=15, context=ctx) as resp:
            served = hashlib.sha256(resp.read(4 << 20)).hexdigest()
    except OSError as exc:
        raise TelemetryError(f"cannot read {url.rstrip('/')}/manifest.json: {exc}") from None
    if served != sha:
        raise TelemetryError(f"{url} serves another bundle (its manifest.json differs from the local one)")


@rollout.command("status")
@click.argument("rollout_id", required=False)
@click.option("--db", default=DEFAULT_DB, show_default=True)
@click.option("--fleet", "fleet_id", default=None, help="List only this fleet's rollouts.")
@json_option
def rollout_status(rollout_id, db, fleet_id, as_json):
    """Show ROLLOUT_ID (or list the newest rollouts)."""
    from ..errors import TelemetryError

    with _store(db, create=False) as store:
        if rollout_id is None:
            rows = store.rollouts(fleet_id)
            if as_json:
                emit_json(rows)
                return
            for r in rows:
                click.echo(f"{r['id']:<32} {r['state']:<10} {r['spec']['bundle']['id']:<24} "
                           f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(r['created_at']))}  {r['detail']}")
            return
        r = store.rollout(rollout_id)
        if r is None:
            raise TelemetryError(f"no rollout {rollout_id!r} in {db}")
        _print(store, r, as_json)


def _request(rollout_id, db, broker, key, state, drive, detach, as_json):
    with _store(db) as store:
        from ..telemetry.ota.controller import Controller

        r = Controller(store, lambda t, p: None, key).request(rollout_id, state)
        current().note(f"rollout {rollout_id}: {r['state']}")
        if drive:
            _drive(store, broker, key, rollout_id, detach, as_json)
        else:
            _print(store, r, as_json)


def _manage(name, state, drive, doc):
    @rollout.command(name, help=doc)
    @click.argument("rollout_id")
    @click.option("--db", default=DEFAULT_DB, show_default=True)
    @click.option("--key", type=click.Path(exists=True, dir_okay=False), default=None,
                  help="Signing key (needed to publish: resume and abort).")
    @click.option("--detach", is_flag=True, help="Publish what is due and return instead of following the rollout.")
    @broker_options
    @json_option
    def command(rollout_id, db, key, detach, broker, as_json):
        if drive and key is None:
            raise click.UsageError(f"{name} publishes commands: give --key")
        _request(rollout_id, db, broker, key, state, drive, detach, as_json)

    return command


_manage("pause", "paused", False, "Stop after the devices in flight finish; no further stage starts.")
_manage("resume", "running", True, "Continue a paused rollout (or drive one whose controller stopped).")
_manage("abort", "aborting", True, "Roll back every device that took the bundle and stop the rollout.")


@fleet.command("serve-artifacts")
@click.argument("directory", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default).")
@click.option("--port", default=8700, show_default=True, type=click.IntRange(0, 65535))
@click.option("--cert-file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Serve HTTPS with this certificate (devices: edgeslm agent --artifact-ca-file CA).")
@click.option("--key-file", default=None, type=click.Path(exists=True, dir_okay=False), help="Its private key.")
def serve_artifacts_command(directory, host, port, cert_file, key_file):
    """Serve bundle directories under DIRECTORY over HTTP with Range (resumable downloads), for demos.

    \b
    Example:
      edgeslm fleet serve-artifacts out/          # http://127.0.0.1:8700/<bundle dir>/manifest.json
    """
    from ..telemetry.ota.artifacts import serve_artifacts

    from ..telemetry.ota.artifacts import url_of

    server = serve_artifacts(directory, host, port, cert_file, key_file)
    current().note(f"serving {directory} on {url_of(server)} (Ctrl-C stops)")
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
