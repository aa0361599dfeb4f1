"""Errors of the ingest.

    IngestError             the ingest's own failures
    BrokerUnreachable       (the MQTT transport's, core/mqtt/errors.py) the broker refused or could not be reached
"""

from __future__ import annotations

from smartpark.core.errors import SmartparkError
from smartpark.core.mqtt.errors import BrokerUnreachable

__all__ = ["BrokerUnreachable", "IngestError"]


class IngestError(SmartparkError):
    """Base of the ingest's errors."""

