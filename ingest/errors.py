"""Errors of the ingest.

    IngestError
    └── BrokerUnreachable   the MQTT broker refused or could not be reached at start-up
"""

from __future__ import annotations

from smartpark.core.errors import SmartparkError

__all__ = ["BrokerUnreachable", "IngestError"]


class IngestError(SmartparkError):
    """Base of the ingest's errors."""


class BrokerUnreachable(IngestError):
    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"MQTT broker {host}:{port}: {reason}")
        self.host, self.port, self.reason = host, port, reason
