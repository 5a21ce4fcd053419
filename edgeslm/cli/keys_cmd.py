"""edgeslm keys generate / keys sign / keys id"""

from __future__ import annotations

import os
from pathlib import Path

import click

from . import cli
from ._common import emit_json, json_option


@cli.group("keys")
def keys_group():
    """Ed25519 keys that sign bundles, so devices run only what you released.

    \b
    Examples:
      edgeslm keys generate release            # writes release.key (private) and release.pub
      edgeslm export smollm2-135m --target x86-64-generic --sign release.key -o out
      edgeslm verify out --key release.pub
      edgeslm run out --key release.pub --prompt "Hello"
    """


@keys_group.command("generate")
@click.argument("name", type=click.Path(path_type=Path))
@click.option("--encrypt", is_flag=True,
              help="Encrypt the private key with a passphrase ($EDGESLM_KEY_PASSPHRASE, else prompted).")
@json_option
def keys_generate(name, encrypt, as_json):
    """Create NAME.key (private, mode 0600: keep it off devices) and NAME.pub (give it to devices)."""
    from ..bundle.signing import PASSPHRASE_ENV, generate_keypair

    passphrase = None
    if encrypt:
        text = os.environ.get(PASSPHRASE_ENV) or click.prompt("Passphrase", hide_input=True,
                                                              confirmation_prompt=True, err=True)
        passphrase = text.encode()
    base = name.with_suffix("") if name.suffix in (".key", ".pub") else name
    priv, pub, kid = generate_keypair(base.with_name(base.name + ".key"), base.with_name(base.name + ".pub"),
                                      passphrase)
    if as_json:
        emit_json({"private_key": str(priv), "public_key": str(pub), "key_id": kid})
        return
    click.echo(f"key {kid}\n  private: {priv}  (signs bundles; keep it secret)\n  public:  {pub}  (verifies them)")


@keys_group.command("sign")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--key", "key", required=True, type=click.Path(path_type=Path), help="Private key (.key PEM).")
@json_option
def keys_sign(bundle, key, as_json):
    """Sign an existing BUNDLE (its files are checked against the manifest first)."""
    from ..bundle.signing import sign_bundle

    kid = sign_bundle(bundle, key)
    if as_json:
        emit_json({"bundle": str(bundle), "key_id": kid})
    else:
        click.echo(f"signed {bundle} with key {kid}")


@keys_group.command("id")
@click.argument("key", type=click.Path(path_type=Path))
@json_option
def keys_id(key, as_json):
    """Print the key id of a public or private KEY file (what manifest.json.sig records)."""
    from ..bundle.signing import key_id, load_private_key, load_public_key
    from ..errors import SignatureError

    if not key.is_file():
        raise SignatureError(f"{key}: no such key file")
    try:
        pub = load_public_key(key)
    except SignatureError:
        pub = load_private_key(key).public_key()
    if as_json:
        emit_json({"key": str(key), "key_id": key_id(pub)})
    else:
        click.echo(key_id(pub))
