"""Standard Webhooks signatures (https://www.standardwebhooks.com): what a receiver verifies.

``webhook-signature: v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">``, keyed with the
bytes of the subscription secret ``whsec_<base64>``. The id is the outbox row's, so it is the same on every
retry (receivers deduplicate on it); the timestamp is the attempt's, so a replayed old request is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import uuid

from smartpark.alerts.errors import BadSecret

__all__ = ["SECRET_PREFIX", "check_secret", "message_id", "new_secret", "sign", "signed_headers"]

SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
SECRET_BYTES = 24  # the spec asks for 24 to 64 random bytes


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def check_secret(secret: str) -> None:
    """Refuse a caller's secret that the spec would not sign with (BadSecret, the reason in its message)."""
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadSecret("the secret is not whsec_ + base64") from exc
    if not secret.startswith(SECRET_PREFIX) or not 24 <= len(key) <= 64:
        raise BadSecret("the secret must be whsec_ + base64 of 24 to 64 bytes")


def message_id() -> str:
    """A unique message id (the spec's `msg_` convention)."""
    return f"msg_{uuid.uuid4().hex}"


def _key(secret: str) -> bytes:
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret starts with {SECRET_PREFIX!r}")
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one attempt."""
    mac = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, msg_id, timestamp, body), "content-type": "application/json"}
