"""Overview page sessions: the login exchanges an API key for a short-lived, revocable session token.

The signed cookie carries only that token, never the API key; the metadata database keeps the token's
SHA-256 hash, the API key it was minted from and its expiry. Logout deletes the row, so copies of the cookie
die with it; an expired token, or one whose API key was revoked since, is refused. The token is no Bearer
key: the API proper does not accept it.
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import BigInteger, String, delete
from sqlalchemy.orm import Mapped, mapped_column

from smartpark.api.deps import Principal
from smartpark.core.clock import now_ms
from smartpark.core.registry import Registry
from smartpark.core.registry.models import Base

__all__ = ["SESSION_TTL_S", "PageSession", "mint_session", "revoke_session",
           "session_principal"]

SESSION_TTL_S = 8 * 3600


class PageSession(Base):
    __tablename__ = "api_page_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(16), index=True)  # the API key the login was made with
    created_ms: Mapped[int] = mapped_column(BigInteger)
    expires_ms: Mapped[int] = mapped_column(BigInteger, index=True)




def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()  # 256 random bits: a plain hash suffices


def mint_session(registry: Registry, key_id: str, *, ttl_s: int = SESSION_TTL_S) -> str:
    """A new session token for the (already verified) API key ``key_id``; expired sessions are pruned."""
    token, now = secrets.token_urlsafe(32), now_ms()
    with registry.session() as s:
        s.execute(delete(PageSession).where(PageSession.expires_ms <= now))
        s.add(PageSession(token_hash=_hash(token), key_id=key_id, created_ms=now, expires_ms=now + ttl_s * 1000))
    return token


def session_principal(registry: Registry, token: object) -> Principal | None:
    """The principal of a live session token; None if unknown, expired, revoked, or its API key was revoked."""
    if not isinstance(token, str) or not token:
        return None
    with registry.session() as s:
        row = s.get(PageSession, _hash(token))
        if row is None or row.expires_ms <= now_ms():
            return None
        key_id = row.key_id
    key = registry.api_key(key_id)
    if key is None or key.revoked:
        return None
    return Principal(key.id, key.role, frozenset(key.sites))


def revoke_session(registry: Registry, token: object) -> None:
    if isinstance(token, str) and token:
        with registry.session() as s:
            s.execute(delete(PageSession).where(PageSession.token_hash == _hash(token)))
