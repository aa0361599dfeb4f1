"""Typed errors of the alert engine and its webhooks.

    AlertsError
    ├── EngineError          the engine cannot start (its MQTT subscription was not confirmed)
    ├── UnsafeDestination    a webhook URL that the SSRF guard refuses (scheme, or a non-global address)
    ├── BadSecret            a webhook signing secret that is not whsec_ + base64 of 24 to 64 bytes
    ├── AlertsUnavailable    the alert tables cannot be read or written now (the database's error is the cause)
    └── DeliveryError        one webhook attempt failed (``retryable`` says whether the outbox tries again)
"""

from __future__ import annotations

from smartpark.core.errors import SmartparkError

__all__ = ["AlertsError", "AlertsUnavailable", "BadSecret", "DeliveryError", "EngineError", "UnsafeDestination"]


class AlertsError(SmartparkError):
    """Base of the alert engine's errors."""


class EngineError(AlertsError):
    """The engine could not start: its subscription was not confirmed."""


class UnsafeDestination(AlertsError):
    """The SSRF guard refused a webhook URL; ``address`` is the offending address when one was resolved."""

    def __init__(self, message: str, *, url: str, address: str | None = None) -> None:
        super().__init__(message)
        self.url, self.address = url, address


class BadSecret(AlertsError):
    """A webhook secret given by the caller that cannot sign: not ``whsec_`` + base64 of 24 to 64 bytes."""


class AlertsUnavailable(AlertsError):
    """The alert tables could not be read or written (database down, table gone): a reader shows the failure,
    never an empty list standing in for it. Retryable by nature; the database's error is ``__cause__``."""


class DeliveryError(AlertsError):
    """A webhook attempt that did not get a 2xx; ``status`` is None for network errors and timeouts."""

    retryable: bool = True

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = True,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status, self.retryable, self.retry_after_s = status, retryable, retry_after_s
