"""Errors of the MQTT transport: what a client of the platform sees when it cannot talk to the broker.

    SmartparkError
    └── MqttError
        └── BrokerUnreachable       no session with the broker: network, refused CONNECT, failed TLS
            ├── TlsHandshakeError   the TLS handshake failed (never followed by a plain-text attempt)
            └── ConnectRefused      the broker answered CONNECT with a failure reason code
"""

from __future__ import annotations

from smartpark.core.errors import SmartparkError

__all__ = ["BrokerUnreachable", "ConnectRefused", "MqttError", "TlsHandshakeError"]


class MqttError(SmartparkError):
    """Base of the MQTT transport's errors."""


class BrokerUnreachable(MqttError):
    """No MQTT session with the broker; ``broker`` names it (``mqtts://host:port`` or ``host:port``)."""

    def __init__(self, host: str, port: int, reason: str, *, tls: bool = False) -> None:
        self.broker = f"mqtts://{host}:{port}" if tls else f"{host}:{port}"
        super().__init__(f"MQTT broker {self.broker}: {reason}")
        self.host, self.port, self.reason = host, port, reason


class TlsHandshakeError(BrokerUnreachable):
    """The TLS handshake with the broker failed: wrong CA, expired or wrong-host certificate, not a TLS port."""


class ConnectRefused(BrokerUnreachable):
    """CONNACK with a failure reason code (bad credentials, not authorised, client id refused)."""
