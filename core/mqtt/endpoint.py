"""Where a client connects and how: host, port, credentials and TLS, from ``SMARTPARK_MQTT_URL`` and the TLS settings.

An ``Endpoint`` is a frozen value (it crosses process boundaries: the load generator's workers get one);
the ``ssl.SSLContext`` it needs is built once per process from its ``TlsFiles`` and shared by every
connection (the MQTT 5 session, paho's ``tls_set_context``, 200 simulated devices).
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from smartpark.core.tls import TlsFiles

if TYPE_CHECKING:
    from smartpark.core.settings import Settings

__all__ = ["Endpoint", "TlsFiles", "is_loopback"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A broker and the login to use there; ``tls`` set means TLS with verification, never plain text."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TlsFiles | None = None

    @property
    def url(self) -> str:
        """For messages and logs: scheme, host and port (never the credentials)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def login(self, username: str | None, password: str | None) -> Endpoint:
        """The same broker with other credentials (a device's, a service's)."""
        return replace(self, username=username, password=password)

    def context(self) -> ssl.SSLContext | None:
        return self.tls.context() if self.tls is not None else None

    @classmethod
    def from_settings(cls, settings: Settings) -> Endpoint | None:
        """The broker of ``SMARTPARK_MQTT_URL`` (None when empty: the embedded broker) with the TLS settings."""
        target = settings.mqtt
        if target is None:
            return None
        tls = TlsFiles(settings.mqtt_ca_file, settings.mqtt_cert_file, settings.mqtt_key_file) if target.tls else None
        return cls(target.host, target.port, target.username, target.password, tls)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses: plain text there never leaves the machine."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
