"""Click options shared by ``edgeslm agent`` and ``edgeslm fleet ...`` (broker address and credentials)."""

from __future__ import annotations

import functools

import click

from .mqtt import BrokerConfig


def broker_options(f):
    """--broker, --username, --password, --ca-file, --cert-file, --key-file, --insecure -> ``broker=BrokerConfig``."""

    @click.option("--broker", "-b", envvar="EDGESLM_BROKER", default="mqtt://127.0.0.1:1883", show_default=True,
                  help="Broker URL: mqtt://host:1883 or mqtts://host:8883 (TLS) [env EDGESLM_BROKER].")
    @click.option("--username", "-u", envvar="EDGESLM_MQTT_USERNAME", default=None,
                  help="MQTT username (a device's is its device id) [env EDGESLM_MQTT_USERNAME].")
    @click.option("--password", envvar="EDGESLM_MQTT_PASSWORD", default=None,
                  help="MQTT password; prefer the env var EDGESLM_MQTT_PASSWORD over the command line.")
    @click.option("--ca-file", type=click.Path(exists=True, dir_okay=False), default=None,
                  help="CA certificate that signed the broker's (mqtts://).")
    @click.option("--cert-file", type=click.Path(exists=True, dir_okay=False), default=None,
                  help="Client certificate, for brokers that authenticate by certificate.")
    @click.option("--key-file", type=click.Path(exists=True, dir_okay=False), default=None,
                  help="Private key of --cert-file.")
    @click.option("--insecure", is_flag=True, help="Do not check the broker certificate's hostname (lab only).")
    @functools.wraps(f)
    def wrapper(*args, broker, username, password, ca_file, cert_file, key_file, insecure, **kw):
        cfg = BrokerConfig.from_url(broker, username=username, password=password, ca_file=ca_file,
                                    cert_file=cert_file, key_file=key_file, insecure=insecure or None)
        return f(*args, broker=cfg, **kw)

    return wrapper
