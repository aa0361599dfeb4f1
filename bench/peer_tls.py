"""Runs a peer pipeline of shared/bench/peers unchanged, its paho client over TLS with the CA in MQTT_CA_FILE.

    python bench/peer_tls.py PEER_SCRIPT [its arguments]

The peers take a host and a port but know nothing of TLS; this gives every paho client they create
``tls_set(ca_certs=...)`` before it connects (certificate and host-name verification on, as smartpark's), so
both pipelines of bench_ingest.py --tls pay for the same TLS.
"""

from __future__ import annotations

import os
import runpy
import sys

import paho.mqtt.client as mqtt

_connect = mqtt.Client.connect


def _connect_tls(self: mqtt.Client, *args: object, **kwargs: object) -> mqtt.MQTTErrorCode:
    self.tls_set(ca_certs=os.environ["MQTT_CA_FILE"])
    return _connect(self, *args, **kwargs)  # type: ignore[arg-type]


mqtt.Client.connect = _connect_tls  # type: ignore[method-assign]
script = sys.argv[1]
sys.argv = [script, *sys.argv[2:]]
runpy.run_path(script, run_name="__main__")
