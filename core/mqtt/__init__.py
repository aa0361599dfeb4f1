"""The MQTT transport of every client of the platform: ingest, alert engine, simulators, load generator.

    endpoint.py     Endpoint (host, port, login, TLS files) from the settings; the SSLContext, built once
    link.py         open_link: TCP, then TLS with verification (never a plain-text fallback); TlsLink
    connect.py      the MQTT 5 CONNECT (credentials, client id, keepalive) and the reconnect Backoff
    source.py       MessageSource: the consumer protocol of the ingest and the alert engine; open_source
    session.py      Mqtt5Session: the fast MQTT 5 consumer on the mqtt5 codec
    paho_source.py  PahoSource (MQTT 3.1.1 or 5) and paho_client, TLS through tls_set_context
    errors.py       BrokerUnreachable, TlsHandshakeError, ConnectRefused (a bad TLS file: ConfigError, core/tls.py)

Publishers (simulators/publisher.py) open their links with ``open_link`` and ``connect_packet`` too.
"""

from smartpark.core.mqtt.endpoint import Endpoint, TlsFiles, is_loopback
from smartpark.core.mqtt.errors import (
    BrokerUnreachable,
    ConnectRefused,
    MqttError,
    TlsHandshakeError,
)
from smartpark.core.mqtt.source import MessageSource, OnMessage, open_source, platform_filters

__all__ = ["BrokerUnreachable", "ConnectRefused", "Endpoint", "MessageSource", "MqttError", "OnMessage",
           "TlsFiles", "TlsHandshakeError", "is_loopback", "open_source", "platform_filters"]
