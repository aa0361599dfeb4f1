"""Device MQTT passwords and API keys: generated here, stored only as hashes.

Device password hashes use Mosquitto's own format (``$7$`` = PBKDF2-SHA512), so the registry can export a
Mosquitto password file as it is and the embedded broker verifies the same hashes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

__all__ = ["DEVICE_PBKDF2_ITERATIONS", "hash_api_secret", "hash_password", "new_api_key", "new_password",
           "split_api_key", "verify_password"]

PBKDF2_ITERATIONS = 20_000  # passwords a person chose (service accounts)
DEVICE_PBKDF2_ITERATIONS = 101
"""Device passwords are 144 random bits (`new_password`): stretching adds nothing against guessing them, while
every failed login costs the broker one hash; at 20,000 rounds 200 wrong passwords cost Mosquitto's single
thread 2.3 CPU-seconds. 101 is mosquitto_passwd's own default."""


def new_password() -> str:
    return secrets.token_urlsafe(18)


def hash_password(password: str, *, iterations: int = PBKDF2_ITERATIONS) -> str:
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        _, kind, iterations, salt, digest = stored.split("$")
        if kind != "7":
            return False
        actual = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(iterations))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, base64.b64decode(digest))


def new_api_key() -> tuple[str, str, str]:
    """Return (full key, public id, hash of the secret part). Only the key holder ever sees the secret."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(24)
    return f"sp_{key_id}_{secret}", key_id, hash_api_secret(secret)


def split_api_key(key: str) -> tuple[str, str] | None:
    prefix, _, rest = key.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != "sp" or not key_id or not secret:
        return None
    return key_id, secret


def hash_api_secret(secret: str) -> str:
    # The secret has 192 bits of entropy: a plain SHA-256 suffices (no dictionary to guard against).
    return hashlib.sha256(secret.encode()).hexdigest()
